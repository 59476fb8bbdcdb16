//! runc-compatible logging for ironcell's binaries: `--log FILE` (default
//! stderr), `--log-format text|json`. The JSON shape is logrus's, as runc
//! writes it (`{"level":"error","msg":"...","time":"..."}`): containerd's
//! go-runc and podman read the last error line of that file to report a
//! failure. Used by `ironcell` and `ironcell-vmm`.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer};
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

struct RuncLayer {
    out: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
    max: Level,
    /// Only events from these targets (module paths, by prefix), when set.
    targets: Option<&'static [&'static str]>,
}

#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S: Subscriber> Layer<S> for RuncLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: LayerContext<'_, S>) -> bool {
        meta.level() <= &self.max
            && self
                .targets
                .is_none_or(|t| t.iter().any(|p| meta.target().starts_with(p)))
    }

    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let level = level_name(event.metadata().level());
        let mut line = String::new();
        match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level.into());
                obj.insert("msg".into(), fields.msg.into());
                obj.insert("time".into(), time.into());
                for (k, v) in fields.extra {
                    obj.insert(k, v.into());
                }
                line = serde_json::Value::Object(obj).to_string();
            }
            LogFormat::Text => {
                let _ = write!(line, "time={time:?} level={level} msg={:?}", fields.msg);
                for (k, v) in fields.extra {
                    let _ = write!(line, " {k}={v:?}");
                }
            }
        }
        line.push('\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

/// Installs the global logger: lines at `max` and more severe go to `log`
/// (appended) or, without it, to stderr.
pub fn init(log: Option<&Path>, format: LogFormat, max: Level) -> io::Result<()> {
    let out: Box<dyn Write + Send> = match log {
        Some(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        None => Box::new(io::stderr()),
    };
    let layer = RuncLayer {
        out: Mutex::new(out),
        format,
        max,
        targets: None,
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Ok(())
}

/// Installs a global logger that writes to stderr, as text, only the
/// warnings (and errors) of `targets` (module paths, by prefix): for a
/// command line that otherwise prints nothing but its final error, the
/// warnings a user must see (such as a failed poststop hook, which the
/// runtime spec makes a warning).
pub fn init_stderr_warnings(targets: &'static [&'static str]) {
    let layer = RuncLayer {
        out: Mutex::new(Box::new(io::stderr())),
        format: LogFormat::Text,
        max: Level::WARN,
        targets: Some(targets),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}
