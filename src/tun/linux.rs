//! Creating a TUN device on Linux, for `xh tun` and the tests; apps on Android get their fd
//! from `VpnService`, so the library itself never creates devices.

use crate::error::{Error, Result};
use std::os::fd::{FromRawFd, OwnedFd};

/// Creates (or attaches to) the TUN device `name` without packet information headers and
/// returns its fd: the device lives while the fd is open (unless made persistent). Needs
/// root or CAP_NET_ADMIN.
pub fn create_device(name: &str) -> Result<OwnedFd> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        return Err(Error::config(
            "dev",
            format!("{name:?}: 1-15 characters, no '/' or spaces"),
        ));
    }
    let fail = |what: String| Error::Other(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: plain open; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(fail("/dev/net/tun".into()));
    }
    // SAFETY: a fresh fd nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    if unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req) } != 0 {
        return Err(fail(format!(
            "creating TUN device {name} (root or CAP_NET_ADMIN needed)"
        )));
    }
    Ok(owned)
}
