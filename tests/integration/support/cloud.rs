//! Cloud storage emulators for the tests, installed by scripts/fetch-emulators.sh (which
//! .ci/run runs): Azurite for Azure Blob Storage, fake-gcs-server for Google Cloud
//! Storage, moto for S3 with Object Lock. Each test starts its own on a free port.

use super::{free_port, remove_test_dir, unique_dir};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and its published key.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "pgcairn-test";
const GCS_BUCKET: &str = "pgcairn-test";

fn cache() -> PathBuf {
    std::env::var_os("PGCAIRN_TEST_PG_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/tmp/pgcairn-cache".into())
}

fn missing(what: &Path) -> ! {
    panic!("{} not found: run scripts/fetch-emulators.sh (as .ci/run does)", what.display())
}

/// A running emulator process: killed, and its directory removed, on drop.
struct Emulator {
    child: Child,
    port: u16,
    base: PathBuf,
    log_name: String,
    /// How it was started, to start it again on the same port and data (`restart`).
    program: PathBuf,
    args: Vec<String>,
}

impl Emulator {
    fn start(name: &'static str, program: &Path, args: impl Fn(u16, &Path) -> Vec<String>) -> Emulator {
        if !program.is_file() {
            missing(program);
        }
        let base = unique_dir(name);
        let data = base.join("data");
        std::fs::create_dir_all(&data).expect("create emulator data dir");
        let log_name = format!("{name}.log");
        std::fs::File::create(base.join(&log_name)).expect("create emulator log");
        let port = free_port();
        let args = args(port, &data);
        let child = spawn(program, &args, &base.join(&log_name));
        let mut emulator = Emulator { child, port, base, log_name, program: program.to_path_buf(), args };
        emulator.wait_until_listening();
        emulator
    }

    fn log(&self) -> String {
        std::fs::read(self.base.join(&self.log_name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn wait_until_listening(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) on start:\n{}", self.log_name, self.log());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "emulator did not listen on {addr} within 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the process to exit: a server stopped by its operator,
    /// which saves what it acknowledged (Azurite keeps its index in memory and writes
    /// it out on exit; a SIGKILL would lose acknowledged writes, a fault of the
    /// emulator, not of what the tests check).
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// Starts it again on the same port and data (after `kill` or `terminate`);
    /// retried while the port is not free yet.
    fn restart(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        for _ in 0..50 {
            self.child = spawn(&self.program, &self.args, &self.base.join(&self.log_name));
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{} did not come back on {addr}:\n{}", self.log_name, self.log());
    }
}

/// `program args`, its output appended to `log`.
fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().append(true).open(log).expect("open emulator log");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
        remove_test_dir(&self.base);
    }
}

/// Azurite's blob service with one empty container.
pub struct Azurite(Emulator);

impl Azurite {
    pub fn start() -> Azurite {
        let program = cache().join("azurite/node_modules/.bin/azurite-blob");
        let emulator = Emulator::start("azurite", &program, |port, data| {
            let mut args: Vec<String> = vec!["--blobHost".into(), "127.0.0.1".into(), "--blobPort".into()];
            args.extend([port.to_string(), "--location".into(), data.display().to_string()]);
            args.extend(["--skipApiVersionCheck".into(), "--loose".into(), "--silent".into()]);
            args
        });
        let azurite = Azurite(emulator);
        azurite.sdk(&format!("c.create_container({CONTAINER:?})"));
        azurite
    }

    /// The blob service URL for `repo-azure-endpoint` (path style, with the account).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.0.port)
    }
    pub fn container(&self) -> &str {
        CONTAINER
    }

    /// Deletes the whole container: the loss of a repository.
    pub fn delete_container(&self) {
        self.sdk(&format!("c.delete_container({CONTAINER:?})"));
    }

    /// Deletes one blob of the container (a lost object).
    pub fn delete_blob(&self, name: &str) {
        self.sdk(&format!("c.get_blob_client({CONTAINER:?}, {name:?}).delete_blob()"));
    }

    /// Flips one byte in the middle of a blob (silent corruption at rest).
    pub fn flip_byte(&self, name: &str) {
        self.sdk(&format!(
            "b = c.get_blob_client({CONTAINER:?}, {name:?})\ndata = bytearray(b.download_blob().readall())\n\
             data[len(data) // 2] ^= 0xFF\nb.upload_blob(bytes(data), overwrite=True)"
        ));
    }

    /// The server goes away (stopped with SIGTERM, see Emulator::terminate).
    pub fn stop(&mut self) {
        self.0.terminate();
    }

    /// Back on the same port with the same blobs.
    pub fn restart(&mut self) {
        self.0.restart();
    }

    /// Runs `statement` with `c`, an azure-storage-blob BlobServiceClient on this server.
    fn sdk(&self, statement: &str) {
        let python = cache().join("emulators-venv/bin/python");
        if !python.is_file() {
            missing(&python);
        }
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
            self.endpoint()
        );
        let script = format!(
            "import sys\nfrom azure.storage.blob import BlobServiceClient\nc = BlobServiceClient.from_connection_string(sys.argv[1])\n{statement}\n"
        );
        let out = Command::new(&python).args(["-c", &script, &connection]).output().expect("run python");
        assert!(out.status.success(), "azure sdk: {}\n{}", String::from_utf8_lossy(&out.stderr), self.0.log());
    }
}

/// fake-gcs-server (filesystem backend) with one empty bucket, behind the front
/// `gcs_xml_put.py`: fake-gcs-server has no XML-API upload, the request every GCS
/// client (object_store too) writes objects with; the front turns it into the
/// JSON-API upload with the same precondition and passes everything else through.
pub struct FakeGcs {
    server: Emulator,
    front: Emulator,
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let venv = cache().join("emulators-venv");
        let program = find_file(&venv, "fake-gcs-server-linux-amd64").unwrap_or_else(|| missing(&venv));
        let server = Emulator::start("fake-gcs", &program, |port, data| {
            let mut args: Vec<String> = vec!["-scheme".into(), "http".into(), "-host".into(), "127.0.0.1".into()];
            args.extend(["-port".into(), port.to_string(), "-backend".into(), "filesystem".into()]);
            args.extend(["-filesystem-root".into(), data.display().to_string()]);
            args.extend(["-public-host".into(), format!("127.0.0.1:{port}"), "-log-level".into(), "warn".into()]);
            args
        });
        let upstream = server.port;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/integration/support/gcs_xml_put.py");
        let front = Emulator::start("gcs-front", &venv.join("bin/python"), |port, _| {
            vec![script.display().to_string(), port.to_string(), upstream.to_string()]
        });
        let gcs = FakeGcs { server, front };
        let body = format!("{{\"name\":\"{GCS_BUCKET}\"}}");
        let reply = gcs.http("POST", "/storage/v1/b", &body);
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
        gcs
    }

    /// The service URL for `repo-gcs-endpoint` (the front).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.front.port)
    }
    pub fn bucket(&self) -> &str {
        GCS_BUCKET
    }

    /// The service goes away: the front every client talks to is killed (SIGKILL;
    /// fake-gcs-server's filesystem backend behind it has written every object it
    /// acknowledged).
    pub fn stop(&mut self) {
        self.front.kill();
    }

    /// Back on the same port.
    pub fn restart(&mut self) {
        self.front.restart();
    }

    /// One plain HTTP/1.1 request to fake-gcs-server itself (it needs no
    /// authentication); the reply.
    fn http(&self, method: &str, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.server.port)).expect("connect fake-gcs-server");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read reply");
        reply
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) && path.is_file() {
            return Some(path);
        }
        if path.is_dir() && !path.is_symlink() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

/// moto's S3 server with one bucket under Object Lock: versioning on, every new object
/// kept for a day in GOVERNANCE mode (the bucket's default retention). The second S3
/// implementation of the tests, and the one with Object Lock.
pub struct MotoS3(Emulator);

pub const MOTO_BUCKET: &str = "pgcairn-locked";

impl MotoS3 {
    pub fn start() -> MotoS3 {
        let python = cache().join("emulators-venv/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/integration/support/moto_server.py");
        let moto =
            MotoS3(Emulator::start("moto", &python, |port, _| vec![script.display().to_string(), port.to_string()]));
        moto.boto(&format!(
            "s3.create_bucket(Bucket={MOTO_BUCKET:?}, ObjectLockEnabledForBucket=True)\n\
             s3.put_object_lock_configuration(Bucket={MOTO_BUCKET:?}, ObjectLockConfiguration={{\
             'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': {{'Mode': 'GOVERNANCE', 'Days': 1}}}}}})"
        ));
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }

    /// The AWS_* environment for pgcairn (moto accepts any key).
    pub fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "moto-key".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "moto-secret".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs `statements` with `s3`, a boto3 client on this server (what an operator's
    /// own tools do with the bucket); returns what they print.
    pub fn boto(&self, statements: &str) -> String {
        let python = cache().join("emulators-venv/bin/python");
        let script = format!(
            "import sys, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='moto-key', \
             aws_secret_access_key='moto-secret', region_name='us-east-1')\n{statements}\n"
        );
        let out = Command::new(&python).args(["-c", &script, &self.endpoint()]).output().expect("run python");
        assert!(out.status.success(), "boto3: {}\n{}", String::from_utf8_lossy(&out.stderr), self.0.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
