//! `autoprog serve`: a small static file server for the web viewer. It serves the viewer's
//! folder (`www/`) at `/` and each training run directory at `/runs/<dir name>/`, on
//! 127.0.0.1 only, so a browser on this machine can read the logs and checkpoints of runs.
//!
//! Nothing outside `www/` and the given run directories can be read: every request path goes
//! through [`Site::resolve`], which refuses `..`, backslashes, NULs and empty segments, and
//! anything whose canonical path (symlinks resolved) leaves the folder it was asked from.
//!
//! Binding to 127.0.0.1 is not enough on its own: a web page on another site can point a
//! name it controls at 127.0.0.1 (DNS rebinding) and read the answers as its own origin. So a
//! request is answered only when its `Host` names this machine's loopback at our port
//! ([`host_is_local`]); no CORS headers are ever sent.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use clap::Args;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tiny_http::{Header, Method, Response, ResponseBox, Server};

/// Threads answering requests: one long download (a checkpoint) must not stall the page's
/// polling of `log.jsonl`.
const WORKERS: usize = 4;

/// What stays unescaped in the `?run=` value of the printed URLs (RFC 3986 unreserved).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Args)]
pub struct ServeArgs {
    /// Training run directories (each with a log.jsonl), served at /runs/<dir name>/.
    #[arg(value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The viewer's folder (with index.html), served at /.
    #[arg(long, value_name = "DIR", default_value = "www")]
    www: PathBuf,
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
pub enum Resource {
    /// A file of the viewer, under `www/`.
    ViewerFile(PathBuf),
    /// A file of a run. Sent with `Cache-Control: no-store`: logs grow while a run trains.
    RunFile(PathBuf),
    /// `/runs/index.json`: the names of the runs in the order given, so the page can list them.
    RunIndex,
}

/// The folders being served, canonicalised once at start so that each request is checked
/// against a fixed root.
pub struct Site {
    www: PathBuf,
    runs: Vec<Run>,
}

struct Run {
    /// The last component of the directory as given: the `<name>` of `/runs/<name>/`.
    name: String,
    /// The canonical directory.
    dir: PathBuf,
}

impl Site {
    /// Checks that `www` holds a viewer and that each run directory is a training run with a
    /// name of its own.
    pub fn new(www: &Path, run_dirs: &[PathBuf]) -> anyhow::Result<Site> {
        ensure!(
            www.join("index.html").is_file(),
            "no viewer at {}: build it with `www/build.sh` or pass --www DIR",
            folder_label(www)
        );
        let www = www.canonicalize().with_context(|| format!("cannot open {}", folder_label(www)))?;
        let mut runs: Vec<Run> = Vec::new();
        let mut given_dirs: Vec<&Path> = Vec::new();
        for given in run_dirs {
            ensure!(
                given.is_dir(),
                "run directory {} does not exist; pass the folder of a training run (the one with log.jsonl)",
                given.display()
            );
            ensure!(
                given.join("log.jsonl").is_file(),
                "{} has no log.jsonl, so it is not a training run; pass a folder that `autoprog train` wrote, \
                 such as runs/<date>-<model>",
                given.display()
            );
            let dir = given.canonicalize().with_context(|| format!("cannot open {}", given.display()))?;
            let name = run_name(given, &dir)?;
            ensure!(
                name != "index.json",
                "run directory {} is named index.json, which is the URL of the list of runs; rename it",
                given.display()
            );
            if let Some(same) = runs.iter().position(|run| run.name == name) {
                bail!(
                    "two runs are named `{name}` ({} and {}) and both would be /runs/{name}/; \
                     serve them from separate `autoprog serve` commands or rename one",
                    given_dirs[same].display(),
                    given.display()
                );
            }
            runs.push(Run { name, dir });
            given_dirs.push(given);
        }
        Ok(Site { www, runs })
    }

    /// The file or listing that `url` (a request target, query included) names, or `None`
    /// for anything that is not there or not allowed: the caller answers 404 either way, so
    /// a probe learns nothing about what lies outside the served folders.
    pub fn resolve(&self, url: &str) -> Option<Resource> {
        // The query (`?run=...`) is for the page's script, not part of a file name.
        let path = url.split(['?', '#']).next().unwrap_or_default();
        // Decoding before splitting turns `%2f` into a separator and `%2e%2e` into `..`, so
        // the segment checks below see what the file system would.
        let decoded = percent_decode_str(path).decode_utf8().ok()?;
        let segments = plain_segments(decoded.strip_prefix('/')?)?;
        match segments.as_slice() {
            ["runs", "index.json"] => Some(Resource::RunIndex),
            ["runs", name, rest @ ..] => {
                let run = self.runs.iter().find(|run| run.name == *name)?;
                file_under(&run.dir, rest).map(Resource::RunFile)
            }
            // `/runs/` itself has no page: no directory listings.
            ["runs"] => None,
            _ => file_under(&self.www, &segments).map(Resource::ViewerFile),
        }
    }

    /// The body of `/runs/index.json`.
    fn run_index_json(&self) -> String {
        let names: Vec<&str> = self.runs.iter().map(|run| run.name.as_str()).collect();
        serde_json::to_string(&names).expect("a list of strings is serialisable")
    }
}

/// `www/` for messages, without doubling a slash the user typed.
fn folder_label(folder: &Path) -> String {
    let shown = folder.display().to_string();
    if shown.ends_with('/') {
        shown
    } else {
        format!("{shown}/")
    }
}

/// The URL name of a run: the last component of the path as given (so a symlink such as
/// `runs/latest` keeps its own name), or of the canonical path when the given one ends in
/// `..` or is `.`.
fn run_name(given: &Path, canonical: &Path) -> anyhow::Result<String> {
    let last = given.file_name().or_else(|| canonical.file_name());
    let name = last.and_then(|name| name.to_str());
    name.map(str::to_string)
        .with_context(|| format!("the name of run directory {} is not UTF-8; rename it", given.display()))
}

/// The segments of a decoded path without its leading `/`, or `None` if any of them could
/// step outside a folder or name something other than a plain file or folder name. One
/// trailing `/` (a directory) is allowed; any other empty segment is not, which refuses
/// `//etc/passwd` (it would make the join below absolute).
fn plain_segments(relative: &str) -> Option<Vec<&str>> {
    let relative = relative.strip_suffix('/').unwrap_or(relative);
    if relative.is_empty() {
        return Some(Vec::new());
    }
    relative.split('/').map(|segment| is_plain_name(segment).then_some(segment)).collect()
}

/// True for one ordinary path component: not empty, `.` or `..`, no backslash (a separator
/// on Windows), no NUL, and no drive prefix.
fn is_plain_name(segment: &str) -> bool {
    if segment.contains(['\\', '\0']) {
        return false;
    }
    let mut components = Path::new(segment).components();
    matches!((components.next(), components.next()), (Some(Component::Normal(_)), None))
}

/// The file at `segments` under the canonical folder `root` (its `index.html` for a folder),
/// if it exists and its canonical path is still under `root`: a symlink may point anywhere.
fn file_under(root: &Path, segments: &[&str]) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    path.extend(segments);
    if path.is_dir() {
        path.push("index.html");
    }
    let canonical = path.canonicalize().ok()?;
    (canonical.starts_with(root) && canonical.is_file()).then_some(canonical)
}

/// The `Content-Type` of a file, by its extension.
fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "jsonl" => "application/x-ndjson",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "txt" => "text/plain; charset=utf-8",
        "toml" => "application/toml",
        // safetensors and anything else: bytes for the page to parse.
        _ => "application/octet-stream",
    }
}

/// Runs `autoprog serve`: validates the folders, binds, prints the URLs and answers requests
/// until the process is killed.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let site = Arc::new(Site::new(&args.www, &args.runs)?);
    let listener = bind_localhost(args.port)?;
    let address = listener.local_addr().context("cannot read the address of the listening socket")?;
    let server =
        Server::from_listener(listener, None).map_err(|e| anyhow::anyhow!("cannot serve on {address}: {e}"))?;
    let server = Arc::new(server);

    // The URLs are a convenience for whoever started the server: if nobody reads stdout any
    // more (e.g. piped to `head -1`), keep serving rather than fail.
    let base = format!("http://{address}/");
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{base}");
    for run in &site.runs {
        let _ = writeln!(stdout, "{base}?run={}", utf8_percent_encode(&run.name, QUERY_VALUE));
    }
    let _ = stdout.flush();
    drop(stdout);
    eprintln!("serving {} and {} run(s) at {base}; Ctrl-C to stop", folder_label(&args.www), site.runs.len());

    let port = address.port();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (server, site) = (Arc::clone(&server), Arc::clone(&site));
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let (method, url) = (request.method().clone(), request.url().to_string());
                    let host = request.headers().iter().find(|h| h.field.equiv("Host")).map(|h| h.value.as_str());
                    let response = if host.is_some_and(|host| host_is_local(host, port)) {
                        response_for(&site, &method, &url)
                    } else {
                        misdirected(port)
                    };
                    let status = response.status_code().0;
                    if status >= 400 {
                        eprintln!("{status} {method} {url}");
                    }
                    // A browser that closed the connection early is not the server's problem.
                    if let Err(e) = request.respond(response) {
                        eprintln!("{method} {url}: could not send the response: {e}");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        if worker.join().is_err() {
            bail!("a request handler crashed; please report it with the request that caused it");
        }
    }
    Ok(())
}

/// A listener on 127.0.0.1 only: the runs are this machine's files, not the network's.
fn bind_localhost(port: u16) -> anyhow::Result<TcpListener> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            bail!("port {port} is in use; pick another with --port (--port 0 picks a free one)")
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on 127.0.0.1:{port}; pick another with --port")),
    }
}

/// True when a request's `Host` header is `127.0.0.1`, `localhost` or `[::1]` with our
/// `port` (or with no port when it is 80, as browsers write it). Anything else, a rebound
/// domain name above all, is refused.
pub fn host_is_local(host: &str, port: u16) -> bool {
    let (name, given_port) = match host.rsplit_once(':') {
        // `[::1]` alone has colons inside the brackets: no port there.
        Some((name, p)) if !p.ends_with(']') => (name, p.parse::<u16>().ok()),
        _ => (host, (port == 80).then_some(80)),
    };
    given_port == Some(port) && (name == "127.0.0.1" || name == "[::1]" || name.eq_ignore_ascii_case("localhost"))
}

/// The answer to a request for another host: 421 (RFC 9110 §15.5.20), nothing served.
fn misdirected(port: u16) -> ResponseBox {
    Response::from_string(format!(
        "this server answers only requests to http://127.0.0.1:{port}/ or http://localhost:{port}/\n"
    ))
    .with_status_code(421)
    .with_header(header("Content-Type", "text/plain; charset=utf-8"))
    .boxed()
}

/// The answer to one request. tiny_http drops the body itself for HEAD.
fn response_for(site: &Site, method: &Method, url: &str) -> ResponseBox {
    if !matches!(method, Method::Get | Method::Head) {
        return Response::from_string("only GET and HEAD\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET, HEAD"))
            .boxed();
    }
    match site.resolve(url) {
        None => not_found(),
        Some(Resource::RunIndex) => Response::from_string(site.run_index_json())
            .with_header(header("Content-Type", "application/json"))
            .with_header(header("Cache-Control", "no-store"))
            .boxed(),
        Some(Resource::ViewerFile(path)) => file_response(&path, false),
        Some(Resource::RunFile(path)) => file_response(&path, true),
    }
}

fn file_response(path: &Path, changes_while_training: bool) -> ResponseBox {
    // The file may have gone between resolving and opening (a checkpoint being replaced).
    let Ok(file) = File::open(path) else { return not_found() };
    let mut response = Response::from_file(file)
        .with_header(header("Content-Type", content_type(path)))
        .with_header(header("X-Content-Type-Options", "nosniff"));
    if changes_while_training {
        response = response.with_header(header("Cache-Control", "no-store"));
    }
    response.boxed()
}

fn not_found() -> ResponseBox {
    Response::from_string("not found\n")
        .with_status_code(404)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .boxed()
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header names and values here are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;

    /// `<tmp>/www/{index.html, pkg/x.wasm}`, `<tmp>/runs/a/log.jsonl`, and beside them
    /// `<tmp>/secret` and `<tmp>/Cargo.toml`, which traversal would reach if it worked.
    fn fixture() -> (TempDir, Site) {
        let tmp = TempDir::new("serve");
        let root = tmp.path();
        for (file, text) in [
            ("www/index.html", "<!doctype html>"),
            ("www/pkg/x.wasm", "\0asm"),
            ("runs/a/log.jsonl", "{}\n"),
            ("secret", "password"),
            ("Cargo.toml", "[package]"),
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let site = Site::new(&root.join("www"), &[root.join("runs/a")]).unwrap();
        (tmp, site)
    }

    fn canonical(path: PathBuf) -> PathBuf {
        path.canonicalize().unwrap()
    }

    #[test]
    fn serves_the_viewer_and_run_files() {
        let (tmp, site) = fixture();
        let index = Resource::ViewerFile(canonical(tmp.path().join("www/index.html")));
        assert_eq!(site.resolve("/"), Some(index));
        let index = Resource::ViewerFile(canonical(tmp.path().join("www/index.html")));
        assert_eq!(site.resolve("/index.html"), Some(index));
        let index = Resource::ViewerFile(canonical(tmp.path().join("www/index.html")));
        assert_eq!(site.resolve("/?run=a"), Some(index));
        let wasm = Resource::ViewerFile(canonical(tmp.path().join("www/pkg/x.wasm")));
        assert_eq!(site.resolve("/pkg/x.wasm"), Some(wasm));
        let log = Resource::RunFile(canonical(tmp.path().join("runs/a/log.jsonl")));
        assert_eq!(site.resolve("/runs/a/log.jsonl?t=1"), Some(log));
        assert_eq!(site.resolve("/runs/index.json"), Some(Resource::RunIndex));
        assert_eq!(site.run_index_json(), r#"["a"]"#);
    }

    #[test]
    fn refuses_traversal_and_unknown_paths() {
        let (_tmp, site) = fixture();
        for url in [
            "/../Cargo.toml",
            "/%2e%2e/Cargo.toml",
            "/%2E%2E/secret",
            "/runs/a/../../secret",
            "/runs/a/..%2f..%2fsecret",
            "/runs/a/%2e%2e/%2e%2e/secret",
            "/pkg/..\\..\\secret",
            "/pkg/%5c..%5csecret",
            "/index.html%00.png",
            "//etc/passwd",
            "/%2fetc/passwd",
            "/./index.html",
            "/pkg//x.wasm",
            "/runs/unknown/log.jsonl",
            "/runs/",
            "/runs/a/",
            "/pkg/",
            "/missing.js",
            "/%ff",
            "index.html",
            "http://127.0.0.1/index.html",
        ] {
            assert_eq!(site.resolve(url), None, "{url}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn follows_symlinks_only_inside_the_root() {
        let (tmp, site) = fixture();
        let www = tmp.path().join("www");
        std::os::unix::fs::symlink(tmp.path().join("secret"), www.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), www.join("up")).unwrap();
        std::os::unix::fs::symlink(www.join("index.html"), www.join("alias.html")).unwrap();
        assert_eq!(site.resolve("/leak.txt"), None);
        assert_eq!(site.resolve("/up/secret"), None);
        // Through `up`, a run's files are outside www/; the viewer's own file is not.
        assert_eq!(site.resolve("/up/runs/a/log.jsonl"), None);
        let index = Resource::ViewerFile(canonical(www.join("index.html")));
        assert_eq!(site.resolve("/up/www/index.html"), Some(index));
        let index = Resource::ViewerFile(canonical(www.join("index.html")));
        assert_eq!(site.resolve("/alias.html"), Some(index));
    }

    #[test]
    fn folder_and_run_problems_are_clear_errors() {
        let (tmp, _site) = fixture();
        let root = tmp.path();
        let error = |www: &Path, runs: &[PathBuf]| Site::new(www, runs).err().expect("an error").to_string();

        let message = error(&root.join("nowhere"), &[]);
        assert!(message.contains("nowhere/") && message.contains("www/build.sh"), "{message}");
        let message = error(&root.join("runs"), &[]);
        assert!(message.contains("no viewer at"), "{message}");

        let www = root.join("www");
        let message = error(&www, &[root.join("runs/missing")]);
        assert!(message.contains("runs/missing does not exist"), "{message}");
        let message = error(&www, &[root.join("runs")]);
        assert!(message.contains("no log.jsonl"), "{message}");

        std::fs::create_dir_all(root.join("other/a")).unwrap();
        std::fs::write(root.join("other/a/log.jsonl"), "{}\n").unwrap();
        let message = error(&www, &[root.join("runs/a"), root.join("other/a")]);
        assert!(message.contains("two runs are named `a`"), "{message}");
    }

    #[test]
    fn run_names_come_from_the_path_as_given() {
        let (tmp, _site) = fixture();
        let run = tmp.path().join("runs/a");
        let site = Site::new(&tmp.path().join("www"), &[run.join("."), run.join("../a")]);
        // `runs/a/.` and `runs/a/../a` are both named `a`.
        assert!(site.is_err());
        let site = Site::new(&tmp.path().join("www"), &[run.join(".")]).unwrap();
        assert_eq!(site.run_index_json(), r#"["a"]"#);
    }

    #[test]
    fn only_loopback_hosts_at_our_port_are_answered() {
        for host in ["127.0.0.1:8000", "localhost:8000", "LocalHost:8000", "[::1]:8000"] {
            assert!(host_is_local(host, 8000), "{host}");
        }
        assert!(host_is_local("localhost", 80));
        assert!(host_is_local("127.0.0.1:80", 80));
        for host in [
            "evil.example.com",
            "evil.example.com:8000",
            "localhost.evil.example.com:8000",
            "127.0.0.1.nip.io:8000",
            "localhost:8001",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "127.0.0.2:8000",
            "0.0.0.0:8000",
            "localhost:08000x",
            "localhost:",
            ":8000",
            "",
            "[::1]:8000:8000",
        ] {
            assert!(!host_is_local(host, 8000), "{host}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        for (file, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("main.js", "text/javascript; charset=utf-8"),
            ("worker.mjs", "text/javascript; charset=utf-8"),
            ("pkg/x_bg.wasm", "application/wasm"),
            ("style.css", "text/css; charset=utf-8"),
            ("summary.json", "application/json"),
            ("log.jsonl", "application/x-ndjson"),
            ("chart.svg", "image/svg+xml"),
            ("a.PNG", "image/png"),
            ("b.jpg", "image/jpeg"),
            ("c.jpeg", "image/jpeg"),
            ("checkpoints/best.safetensors", "application/octet-stream"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("config.toml", "application/toml"),
            ("README", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(file)), expected, "{file}");
        }
    }
}
