//! A Mosquitto 2 broker per test: its own port, directory and persistence
//! file, stopped (SIGTERM, so it saves its state) and started again at will.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `mosquitto -c <dir>/mosquitto.conf`. Killed on drop.
pub struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    pub port: u16,
}

impl Broker {
    /// Mosquitto on 127.0.0.1 with `persistence true` in `dir`, anonymous
    /// clients allowed unless `extra` (more mosquitto.conf lines, e.g. a
    /// `password_file`) says otherwise; waited for until it accepts.
    pub fn start(dir: &Path, extra: &str) -> Broker {
        let port = super::free_port();
        std::fs::create_dir_all(dir).unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             {}\
             persistence true\n\
             persistence_location {}/\n\
             log_dest file {}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             {extra}\n",
            user(),
            dir.display(),
            dir.join("mosquitto.log").display(),
        );
        let conf = if extra.contains("allow_anonymous") {
            conf
        } else {
            format!("{conf}allow_anonymous true\n")
        };
        std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
        let mut broker = Broker {
            child: None,
            dir: dir.to_path_buf(),
            port,
        };
        broker.resume();
        broker
    }

    /// Starts it again (same port, same persistence file).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "mosquitto is running already");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install -y mosquitto)");
        self.child = Some(child);
        let port = self.port;
        super::wait_for("mosquitto to accept", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM and wait: Mosquitto writes its persistence file as it exits.
    #[allow(unsafe_code)]
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child, not reaped yet, so its pid is ours.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let mut exited = false;
        super::wait_until(Duration::from_secs(10), || {
            exited = child.try_wait().unwrap().is_some();
            exited
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto did not stop within 10 s");
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// A `password_file` line for `user`:`password` (mosquitto_passwd).
    pub fn password_file(dir: &Path, user: &str, password: &str) -> String {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&path)
            .args([user, password])
            .stdout(Stdio::null())
            .status()
            .expect("mosquitto_passwd (apt-get install -y mosquitto)");
        assert!(status.success());
        format!("password_file {}\nallow_anonymous false\n", path.display())
    }
}

/// Mosquitto started as root switches to user `mosquitto`, which cannot
/// write the test's directory (its log and persistence file): stay root.
#[allow(unsafe_code)]
fn user() -> &'static str {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
