//! The CRI's streaming exec as `kubectl exec -it` drives it: the URL that
//! RuntimeService.Exec answers is opened as a websocket speaking
//! Kubernetes' `v4.channel.k8s.io`, in which every binary message starts
//! with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the process's end (a
//! JSON Status), 4 terminal resizes (a JSON size).

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Error, Message};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// What a streaming exec gave back: its terminal's output and the JSON
/// Status its end was reported with.
pub struct Streamed {
    pub output: String,
    pub status: String,
}

/// Opens the streaming exec at `url` (`http://host:port/exec/<token>`),
/// sizes its terminal to `rows` x `cols`, types `input`, and reads until
/// the process ends, at most `limit`.
pub fn exec_in_terminal(
    url: &str,
    rows: u16,
    cols: u16,
    input: &[u8],
    limit: Duration,
) -> Result<Streamed, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let tcp = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut request = format!("ws://{rest}")
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().expect("a valid header value"),
    );
    let (mut ws, _) = tungstenite::client(request, tcp).map_err(|e| format!("{url}: {e}"))?;
    let on = |channel: u8, data: &[u8]| Message::Binary([&[channel][..], data].concat());
    let size = format!(r#"{{"Width":{cols},"Height":{rows}}}"#);
    ws.send(on(RESIZE, size.as_bytes()))
        .map_err(|e| format!("resize: {e}"))?;
    ws.send(on(STDIN, input))
        .map_err(|e| format!("stdin: {e}"))?;
    let (mut output, mut status) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + limit;
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "the exec did not end within {limit:?}; output so far: {:?}",
                String::from_utf8_lossy(&output)
            ));
        }
        match ws.read() {
            Ok(Message::Binary(m)) => match m.split_first() {
                Some((&STDOUT | &STDERR, data)) => output.extend_from_slice(data),
                Some((&STATUS, data)) => status.extend_from_slice(data),
                _ => {}
            },
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => break,
            Ok(_) => {}
            Err(Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(Error::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading the exec's stream: {e}")),
        }
    }
    Ok(Streamed {
        output: String::from_utf8_lossy(&output).into_owned(),
        status: String::from_utf8_lossy(&status).into_owned(),
    })
}
