//! A real S3 protocol endpoint for the tests: s3s-fs serving a temporary directory
//! (SigV4, multipart, conditional PUT). Installed by .ci/run with
//! `cargo install s3s-fs --version 0.14.1 --locked --features binary`.

use super::{free_port, remove_test_dir, unique_dir};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "pgcairn-test";
const ACCESS_KEY: &str = "pgcairn-key";
const SECRET_KEY: &str = "pgcairn-secret";
/// s3s-fs accepts any region; clients still need one to sign requests.
const REGION: &str = "us-east-1";

/// A running s3s-fs with one empty bucket. Dropping it kills the server and removes its
/// files unless PGCAIRN_TEST_KEEP is set.
pub struct S3Server {
    child: Child,
    port: u16,
    /// Holds `data/` (served) and `s3s-fs.log` (kept outside the served tree).
    base: PathBuf,
}

impl S3Server {
    pub fn start() -> S3Server {
        let program = find_s3s_fs();
        let base = unique_dir("s3");
        let data = base.join("data");
        // A bucket is a sub-directory of the served root.
        std::fs::create_dir_all(data.join(BUCKET)).expect("create bucket dir");
        let log = std::fs::File::create(base.join("s3s-fs.log")).expect("create s3s-fs.log");
        let port = free_port();
        let child = Command::new(&program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup s3s-fs.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        // Construct first so that Drop cleans up if waiting fails.
        let mut server = S3Server { child, port, base };
        server.wait_until_listening();
        server
    }

    /// "http://127.0.0.1:PORT" (path-style requests; no TLS).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn bucket(&self) -> &str {
        BUCKET
    }
    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }
    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }
    pub fn region(&self) -> &str {
        REGION
    }

    /// The served root: object `KEY` of the bucket is the file `dir()/bucket()/KEY`, so tests
    /// can inspect or damage stored objects directly.
    pub fn dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// Environment for `object_store`'s `AmazonS3Builder::from_env()` (or a child process).
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_BUCKET", BUCKET.to_string()),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read(self.base.join("s3s-fs.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGKILL the server, as a crash mid-request would; `restart` brings it back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start s3s-fs again on the same port, serving the same directory (after `kill`).
    /// Retried briefly: the port can take a moment to become free again.
    pub fn restart(&mut self) {
        let program = find_s3s_fs();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        for _ in 0..50 {
            let log =
                std::fs::OpenOptions::new().append(true).open(self.base.join("s3s-fs.log")).expect("open s3s-fs.log");
            self.child = Command::new(&program)
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(self.dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup s3s-fs.log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot restart {}: {e}", program.display()));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break; // most likely the port is not free yet: try again
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("s3s-fs did not come back on {addr}:\n{}", self.log());
    }

    fn wait_until_listening(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("s3s-fs exited ({status}) on start:\n{}", self.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("s3s-fs did not listen on {addr} within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_test_dir(&self.base);
    }
}

/// s3s-fs from PATH, else from cargo's bin directory (`cargo install` puts it there, but
/// that directory is not always on PATH).
fn find_s3s_fs() -> PathBuf {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "s3s-fs not found in PATH, $CARGO_HOME/bin or ~/.cargo/bin: run \
                 `cargo install s3s-fs --version 0.14.1 --locked --features binary` \
                 (as .ci/run does)"
        )
    })
}
