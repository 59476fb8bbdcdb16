//! WebAssembly test programs (WebAssembly text, compiled here with the
//! `wat` crate) and a container image that carries one.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// WASI preview 1 imports the test programs use.
const IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
"#;

/// The text of a WASI command whose `_start` writes `text` to stdout, then
/// runs `rest` (which may call `$proc_exit`, `$path_open`, and find the
/// name "new-file" at address 512).
pub fn program_text(text: &str, rest: &str) -> String {
    format!(
        r#"(module {IMPORTS} (memory (export "memory") 1)
             (data (i32.const 16) "{}")
             (data (i32.const 512) "new-file")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const {}))
               (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
               {rest}))"#,
        text.replace('\n', "\\n"),
        text.len()
    )
}

/// [`program_text`], compiled.
pub fn program(text: &str, rest: &str) -> Vec<u8> {
    wat::parse_str(program_text(text, rest)).unwrap()
}

/// `rest` that sleeps 50 ms (poll_oneoff on a relative monotonic clock
/// subscription at address 1024), exiting with 3 if the call fails.
pub const SLEEP_50MS: &str = "
  (i64.store (i32.const 1024) (i64.const 0))
  (i32.store8 (i32.const 1032) (i32.const 0))
  (i32.store (i32.const 1040) (i32.const 1))
  (i64.store (i32.const 1048) (i64.const 50000000))
  (i64.store (i32.const 1056) (i64.const 0))
  (i32.store16 (i32.const 1064) (i32.const 0))
  (if (call $poll_oneoff (i32.const 1024) (i32.const 1104) (i32.const 1) (i32.const 1200))
    (then (call $proc_exit (i32.const 3))))";

/// `rest` for a program that spins until it is killed.
pub const SPIN: &str = "(loop $l (br $l))";

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A one-layer image `repo:tag` whose only file is `/app.wasm` (`module`)
/// and whose entrypoint runs it, as a docker archive (`docker save`'s
/// layout, which `podman load` and `ctr images import` read) in `dir`.
pub fn image_archive(dir: &Path, repo: &str, tag: &str, module: &[u8]) -> PathBuf {
    let stage = dir.join(format!("{repo}-{tag}-image"));
    let rootfs = stage.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("app.wasm"), module).unwrap();
    let out = stage.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let layer = stage.join("layer.tar");
    let tar = |dst: &Path, src: &Path| {
        let st = Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
            .arg(dst)
            .arg("-C")
            .arg(src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar {}", dst.display());
    };
    tar(&layer, &rootfs);
    let layer_hex = sha256_hex(&std::fs::read(&layer).unwrap());
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": ["/app.wasm"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    })
    .to_string();
    let config_hex = sha256_hex(config.as_bytes());
    std::fs::create_dir_all(out.join(&layer_hex)).unwrap();
    std::fs::rename(&layer, out.join(&layer_hex).join("layer.tar")).unwrap();
    std::fs::write(out.join(format!("{config_hex}.json")), &config).unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [format!("{repo}:{tag}")],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]);
    std::fs::write(out.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = dir.join(format!("{repo}-{tag}.docker.tar"));
    tar(&archive, &out);
    archive
}
