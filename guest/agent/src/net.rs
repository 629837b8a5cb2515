//! Interface configuration with the classic IPv4 ioctls (no netlink needed for
//! one address and one default route).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::cmdline::{BootConfig, IpMode};
use crate::dhcp;

/// Brings up `lo`, then `eth0` as `cfg` says. Returns quietly if there is no
/// `eth0`. DHCP runs on a background thread so exec does not wait for it.
pub fn configure(cfg: &BootConfig) {
    if let Err(e) = set_up("lo") {
        crate::log!("cannot bring up lo: {e}");
    }
    if !std::path::Path::new("/sys/class/net/eth0").exists() {
        return;
    }
    if let Err(e) = set_up("eth0") {
        crate::log!("cannot bring up eth0: {e}");
        return;
    }
    match cfg.ip {
        IpMode::Off => {}
        IpMode::Static(addr, prefix) => {
            if let Err(e) = apply("eth0", addr, prefix, cfg.gateway, &cfg.dns) {
                crate::log!("cannot configure eth0: {e}");
            }
        }
        IpMode::Dhcp => {
            std::thread::spawn(|| match dhcp::acquire("eth0") {
                Ok(lease) => {
                    let r = apply(
                        "eth0",
                        lease.address,
                        lease.prefix,
                        lease.router,
                        &lease.dns,
                    );
                    match r {
                        Ok(()) => crate::log!("eth0: {}/{} by DHCP", lease.address, lease.prefix),
                        Err(e) => crate::log!("cannot configure eth0: {e}"),
                    }
                }
                Err(e) => crate::log!("DHCP on eth0 failed: {e}"),
            });
        }
    }
}

/// Sets address, route and name servers.
fn apply(
    ifname: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    dns: &[Ipv4Addr],
) -> io::Result<()> {
    let sock = inet_socket()?;
    let mask = prefix_mask(prefix);
    ifreq_addr(&sock, ifname, libc::SIOCSIFADDR, addr)?;
    ifreq_addr(&sock, ifname, libc::SIOCSIFNETMASK, mask)?;
    if let Some(gw) = gateway {
        add_default_route(&sock, gw)?;
    }
    if !dns.is_empty() {
        let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        std::fs::write("/etc/resolv.conf", text)?;
    }
    Ok(())
}

/// The netmask of a prefix length (`/24` → 255.255.255.0).
pub fn prefix_mask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

fn inet_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data (a name and a union of integers,
    // sockaddrs and a pointer); all-zero is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if ifname.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte C structs; the kernel
    // reads a sockaddr_in through the sockaddr of an AF_INET request.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets `IFF_UP` on an interface.
fn set_up(ifname: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(ifname)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass,
    // which lives for the call; `ifru_flags` is the union member these
    // requests use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn ifreq_addr(
    sock: &OwnedFd,
    ifname: &str,
    request: libc::c_ulong,
    addr: Ipv4Addr,
) -> io::Result<()> {
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read the ifreq we pass, which lives
    // for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's `struct rtentry` (SIOCADDRT), which glibc's libc crate lacks.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn add_default_route(sock: &OwnedFd, gw: Ipv4Addr) -> io::Result<()> {
    let rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gw),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one rtentry, laid out as the kernel's (repr(C),
    // same field types); null rt_dev lets the kernel pick the interface.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &rt) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_mask(17), Ipv4Addr::new(255, 255, 128, 0));
    }

    #[test]
    fn rtentry_matches_the_kernel_layout() {
        // x86_64 `struct rtentry` is 120 bytes.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
