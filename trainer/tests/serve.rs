//! `autoprog serve` end to end: the binary on a free port, spoken to with raw HTTP/1.1 so that
//! paths reach the server exactly as written (a client library would normalise `/../`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A fresh folder for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("autoprog-serve-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, file: &str, contents: &[u8]) {
        let path = self.0.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `autoprog serve`, killed when dropped (also when a test fails).
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    address: String,
    /// The lines the server printed: its URL, then one per run.
    urls: Vec<String>,
    /// Kept open so that the server never writes into a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(args: &[&str], runs: usize, stderr_log: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_autoprog"))
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_log).unwrap())
            .spawn()
            .expect("autoprog runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut urls = Vec::new();
        for _ in 0..=runs {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            if line.is_empty() {
                let _ = child.wait();
                panic!(
                    "the server stopped before printing its URLs:\n{}",
                    std::fs::read_to_string(stderr_log).unwrap()
                );
            }
            urls.push(line.trim_end().to_string());
        }
        let address = urls[0]
            .strip_prefix("http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("not a server URL: {}", urls[0]))
            .to_string();
        Server { child, address, urls, _stdout: stdout }
    }

    /// Sends `request_line` (e.g. `GET /x HTTP/1.1`) for the server's own address and returns
    /// the status, the header block (lowercased) and the body.
    fn request(&self, request_line: &str) -> (u16, String, Vec<u8>) {
        self.request_to(&format!("Host: {}\r\n", self.address), request_line)
    }

    /// [`Server::request`] with `host_lines` as the Host header(s) (`""`: none).
    fn request_to(&self, host_lines: &str, request_line: &str) -> (u16, String, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body_length = if request_line.starts_with("POST") { "Content-Length: 0\r\n" } else { "" };
        write!(stream, "{request_line}\r\n{host_lines}{body_length}Connection: close\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        let split = reply.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let head = String::from_utf8(reply[..split].to_vec()).unwrap().to_ascii_lowercase();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        (status, head, reply[split + 4..].to_vec())
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.request(&format!("GET {path} HTTP/1.1"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn autoprog_serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autoprog")).arg("serve").args(args).output().expect("autoprog runs")
}

#[test]
fn serves_the_viewer_and_runs_and_nothing_else() {
    let scratch = Scratch::new("serves");
    scratch.write("www/index.html", b"<!doctype html><title>viewer</title>");
    scratch.write("www/pkg/viewer_bg.wasm", b"\0asm\x01\0\0\0");
    scratch.write("runs/20261127-nano/log.jsonl", b"{\"event\":\"start\"}\n");
    scratch.write("runs/secret", b"password");
    scratch.write("secret", b"password");
    let www = scratch.0.join("www");
    let run = scratch.0.join("runs/20261127-nano");
    let server = Server::start(
        &["--port", "0", "--www", www.to_str().unwrap(), run.to_str().unwrap()],
        1,
        &scratch.0.join("stderr.txt"),
    );
    assert!(server.address.starts_with("127.0.0.1:") && !server.address.ends_with(":0"), "{}", server.address);
    assert_eq!(server.urls[1], format!("http://{}/?run=20261127-nano", server.address));

    let (status, head, body) = server.get("/");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"<!doctype html><title>viewer</title>");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(!head.contains("no-store"), "viewer files may be cached: {head}");

    let (status, head, body) = server.get("/pkg/viewer_bg.wasm");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/wasm"), "{head}");
    assert_eq!(body, b"\0asm\x01\0\0\0");

    let (status, head, body) = server.get("/runs/20261127-nano/log.jsonl?poll=1");
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"{\"event\":\"start\"}\n");
    assert!(head.contains("content-type: application/x-ndjson"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");

    let (status, head, body) = server.get("/runs/index.json");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let names: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(names, serde_json::json!(["20261127-nano"]));

    let (status, head, body) = server.request("HEAD /index.html HTTP/1.1");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-length: 36"), "{head}");
    assert!(body.is_empty(), "HEAD has no body");

    for path in [
        "/../secret",
        "/%2e%2e/secret",
        "/%2E%2E/%2E%2E/secret",
        "/runs/20261127-nano/../secret",
        "/runs/20261127-nano/..%2fsecret",
        "/runs/20261127-nano/..%5csecret",
        "//etc/passwd",
        "/runs/unknown/log.jsonl",
        "/runs/",
        "/pkg/",
        "/missing.js",
    ] {
        let (status, _, body) = server.get(path);
        assert_eq!(status, 404, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("password"), "{path}");
    }

    let (status, head, _) = server.request("POST /index.html HTTP/1.1");
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("allow: get, head"), "{head}");

    let port = server.address.rsplit_once(':').unwrap().1;
    let (status, head, _) = server.request_to(&format!("Host: localhost:{port}\r\n"), "GET /runs/index.json HTTP/1.1");
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("access-control"), "no CORS headers: {head}");
    // DNS rebinding: a page of another site that resolves its own name to 127.0.0.1.
    for host_lines in [
        "Host: evil.example.com\r\n".to_string(),
        format!("Host: evil.example.com:{port}\r\n"),
        format!("Host: localhost:{port}.evil.example.com\r\n"),
        "Host: localhost\r\n".to_string(),
        String::new(),
    ] {
        for path in ["/", "/runs/index.json", "/runs/20261127-nano/log.jsonl"] {
            let (status, head, body) = server.request_to(&host_lines, &format!("GET {path} HTTP/1.1"));
            assert_eq!(status, 421, "{host_lines:?} {path}: {head}");
            let body = String::from_utf8_lossy(&body);
            assert!(!body.contains("event") && !body.contains("doctype") && !body.contains("nano"), "{body}");
            assert!(!head.contains("access-control"), "{head}");
        }
    }
}

#[test]
fn missing_viewer_folder_is_a_clear_error() {
    let scratch = Scratch::new("no-www");
    let missing = scratch.0.join("no-viewer-here");
    let out = autoprog_serve(&["--port", "0", "--www", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-viewer-here/") && err.contains("www/build.sh") && err.contains("--www"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_runs_and_busy_ports_are_clear_errors() {
    let scratch = Scratch::new("bad-runs");
    scratch.write("www/index.html", b"<!doctype html>");
    scratch.write("a/run/log.jsonl", b"{}\n");
    scratch.write("b/run/log.jsonl", b"{}\n");
    scratch.write("empty/readme.txt", b"not a run");
    let www = scratch.0.join("www");
    let path = |p: &str| scratch.0.join(p).to_str().unwrap().to_string();
    let www = www.to_str().unwrap();

    let cases: [(Vec<String>, &str); 3] = [
        (vec![path("nope")], "does not exist"),
        (vec![path("empty")], "has no log.jsonl"),
        (vec![path("a/run"), path("b/run")], "two runs are named `run`"),
    ];
    for (runs, expected) in cases {
        let mut args = vec!["--port", "0", "--www", www];
        args.extend(runs.iter().map(String::as_str));
        let out = autoprog_serve(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected) && !err.contains("panicked"), "{err}");
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = autoprog_serve(&["--port", &port, "--www", www, &path("a/run")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("port {port} is in use")) && err.contains("--port"), "{err}");
}
