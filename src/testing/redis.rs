//! A real `redis-server`, started on a free loopback port in a temporary directory and stopped when dropped: for
//! tests and demos of the [`RedisStore`](crate::redis::RedisStore). Never a mock.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};

/// A `redis-server` child process on `127.0.0.1`, in a directory of its own, killed and removed on drop.
///
/// The program is `redis-server` from `PATH`, or the path in the environment variable `TGA_REDIS_SERVER`
/// (Debian and Ubuntu: `apt-get install redis-server`).
pub struct RedisServer {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence.
    pub fn start() -> Result<RedisServer, Error> {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server with these extra arguments (`--requirepass`, `--appendonly yes`, `--maxmemory`, …).
    pub fn start_with(args: &[&str]) -> Result<RedisServer, Error> {
        let program = std::env::var_os("TGA_REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
        let dir = std::env::temp_dir().join(format!(
            "tga-redis-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("could not create {}: {e}", dir.display())))?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .map_err(|e| failed(format!("could not find a free port: {e}")))?
            .port();
        let mut server =
            RedisServer { program, dir, port, args: args.iter().map(|a| (*a).to_owned()).collect(), child: None };
        server.restart()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on (the same after [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory (where `appendonly` files go).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it at once (`SIGKILL`): what a crash or an OOM kill does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`kill`](Self::kill)) on the same port and directory, and waits until it answers
    /// `PING`.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut command = Command::new(&self.program);
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir, "--daemonize", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|e| {
            failed(format!(
                "could not start {}: {e}. Install it (`apt-get install redis-server`) or set TGA_REDIS_SERVER",
                self.program.display()
            ))
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.answers_ping() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(failed(format!("{} exited at once ({status})", self.program.display())));
            }
            if Instant::now() > deadline {
                return Err(failed(format!("{} did not answer PING within 10 s", self.program.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING` (or refuses it for want of a password: it is up).
    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut answer = [0u8; 64];
        match stream.read(&mut answer) {
            Ok(n) => answer[..n].starts_with(b"+PONG") || answer[..n].starts_with(b"-NOAUTH"),
            Err(_) => false,
        }
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the arguments: they may hold a password (`--requirepass`).
        f.debug_struct("RedisServer")
            .field("program", &self.program)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("running", &self.child.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn failed(message: String) -> Error {
    Error::new(ErrorKind::Runtime, message)
}
