//! A socat pseudo-terminal pair, the serial line of the serial and Modbus
//! tests: the gateway opens one end, the device (simulator or pymodbus) the
//! other. Fixed link paths, so a pair can be recreated ("replugged").

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct Cable {
    child: Child,
    pub gateway_end: PathBuf,
    pub device_end: PathBuf,
}

impl Cable {
    /// `dir/ttyGW` for the gateway, `dir/ttyDEV` for the device.
    pub fn plug(dir: &Path) -> Cable {
        let gateway_end = dir.join("ttyGW");
        let device_end = dir.join("ttyDEV");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", gateway_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", device_end.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed (tests/run installs it)");
        wait_for("socat's pseudo-terminals", Duration::from_secs(10), || {
            gateway_end.exists() && device_end.exists()
        });
        Cable {
            child,
            gateway_end,
            device_end,
        }
    }

    /// Pulls the cable: both ends disappear.
    pub fn unplug(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.gateway_end);
        let _ = std::fs::remove_file(&self.device_end);
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
