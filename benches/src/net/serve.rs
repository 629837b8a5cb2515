//! The agentvm-net peer: a [`NetStack`] behind the link, in a loop of
//! its own like a device's event loop.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use agentvm_net::{Mode, NetStack, Policy, StackConfig};
use anyhow::{ensure, Context};

use crate::link::{Link, HIGH_WATER};

/// The stack's memory budget here, bytes: every connection of the
/// idle-flow test gets full-size buffers.
const IDLE_FLOW_BUDGET: usize = 8 << 30;
use crate::{MTU, SINK_NAME};

/// Serves one guest on a socket at `path`: the stack's policy is
/// filtered, with [`SINK_NAME`] pinned to 127.0.0.1 and `ports` allowed.
/// Returns when the guest hangs up.
pub fn serve_agentvm(path: &Path, ports: &[u16]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("{}", path.display()))?;
    let (sock, _) = listener.accept()?;
    drop(listener);
    // passt asks for the largest send buffer the host allows; so do we.
    set_sndbuf(&sock, i32::MAX / 2)?;
    let mut link = Link::new(sock)?;
    let mut policy = Policy::new(Mode::Filtered);
    policy.pin(SINK_NAME, Ipv4Addr::LOCALHOST)?;
    policy.ports = ports.to_vec();
    let mut stack = NetStack::new(StackConfig {
        policy,
        mtu: MTU,
        // The idle-flow test opens 500 connections at once: the default
        // 64 MiB budget, which reserves each connection's worst case
        // (full buffers both ways), refuses those past some 200, and the
        // bulk connection opened after them would get the smallest
        // buffers. This measures the data path, not the budget.
        memory_budget: IDLE_FLOW_BUDGET,
        ..StackConfig::default()
    })?;
    loop {
        let mut moved = match link.fill() {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        while let Some(frame) = link.frame()? {
            stack.push_frame(frame);
            moved = true;
        }
        stack.poll();
        // Like a full virtio rx queue: frames stay in the stack (and TCP
        // slows the host side) while the guest does not read.
        while link.pending() < HIGH_WATER {
            let Some(frame) = stack.pop_frame() else {
                break;
            };
            link.queue(&frame);
            stack.recycle(frame);
            moved = true;
        }
        moved |= link.flush()?;
        if !moved {
            let mut delay = stack.poll_delay();
            if link.pending() >= HIGH_WATER {
                // Only the guest reading helps: do not spin meanwhile.
                delay = delay.map(|d| d.max(Duration::from_millis(1)));
            }
            link.wait(Some(stack.as_raw_fd()), delay);
        }
    }
}

fn set_sndbuf(sock: &UnixStream, bytes: i32) -> anyhow::Result<()> {
    // SAFETY: a valid socket and a c_int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_SNDBUF: {}", io::Error::last_os_error());
    Ok(())
}
