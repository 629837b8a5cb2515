//! Live mounts: virtio-fs devices put into the empty hot-plug slots
//! declared at boot ([`crate::VmConfig::hotplug_slots`]) while the guest
//! runs, and taken out again.
//!
//! The virtiofsd behind such a device is started by the embedder (the VMM
//! is confined by then and may not start a daemon for a new directory);
//! the device only connects to its socket in the VM's state directory,
//! `virtiofs-<tag>.sock`. The guest sees the device once its driver
//! probes the slot again (`bind` in sysfs); see
//! `agentvm_devices::virtio::transport::mmio::slot`.
//!
//! Requests come from any thread ([`crate::VmHandle::attach_fs`]) and run
//! on the activation thread, whose seccomp filter already covers the
//! vhost-user work of virtio-fs; the caller waits for the answer.
//! Emptying a slot stops the device and closes the connection, after
//! which the daemon ends by itself: the host directory is out of the
//! guest's reach whatever the guest does.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use agentvm_devices::virtio::fs::{FsConfig, FsError, VirtioFs};
use agentvm_devices::virtio::transport::mmio::{MmioTransport, SlotError};
use vmm_sys_util::eventfd::EventFd;

use crate::device_manager::MmioSlot;

/// How long a request waits for the activation thread.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a live mount could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The VM was built without hot-plug slots.
    #[error("This VM has no hot-plug slots")]
    NoSlots,
    /// Every slot holds a device.
    #[error("All {0} hot-plug slots are in use; unmount one first")]
    Full(usize),
    /// The tag is in use already.
    #[error("A live mount with tag {0} exists already")]
    TagInUse(String),
    /// No slot holds a device with this tag.
    #[error("No live mount has tag {0}")]
    UnknownTag(String),
    /// Connecting to the daemon or the handshake failed.
    #[error("Cannot attach to virtiofsd of {tag}")]
    Attach {
        /// The tag.
        tag: String,
        /// What went wrong.
        #[source]
        source: Box<FsError>,
    },
    /// The transport refused.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The activation thread did not answer in time, or is gone.
    #[error("The VM did not carry out the request (it may be stopping)")]
    NoAnswer,
}

/// Where an attached device sits: what the guest needs to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedFs {
    /// The slot's index among the hot-plug slots.
    pub slot: usize,
    /// Guest-physical base of its virtio-mmio window.
    pub base: u64,
    /// Its interrupt.
    pub gsi: u32,
    /// The virtio-fs tag.
    pub tag: String,
}

enum Op {
    Attach { tag: String, pid: u32 },
    Detach { tag: String },
}

type Answer = Result<AttachedFs, HotplugError>;

struct Job {
    op: Op,
    answer: mpsc::SyncSender<Answer>,
}

struct Slot {
    place: MmioSlot,
    transport: Arc<Mutex<MmioTransport>>,
    tag: Option<String>,
}

/// The VM's hot-plug slots and the requests waiting for them.
pub(crate) struct Hotplug {
    state_dir: PathBuf,
    slots: Mutex<Vec<Slot>>,
    jobs: Mutex<VecDeque<Job>>,
    wake: EventFd,
}

impl Hotplug {
    /// Slots at `places`, their daemons' sockets in `state_dir`; `wake`
    /// wakes the activation thread.
    pub(crate) fn new(
        state_dir: PathBuf,
        places: Vec<(MmioSlot, Arc<Mutex<MmioTransport>>)>,
        wake: EventFd,
    ) -> Self {
        let slots = places
            .into_iter()
            .map(|(place, transport)| Slot {
                place,
                transport,
                tag: None,
            })
            .collect();
        Hotplug {
            state_dir,
            slots: Mutex::new(slots),
            jobs: Mutex::new(VecDeque::new()),
            wake,
        }
    }

    fn submit(&self, op: Op) -> Answer {
        let (answer, wait) = mpsc::sync_channel(1);
        lock(&self.jobs).push_back(Job { op, answer });
        self.wake.write(1).map_err(|_| HotplugError::NoAnswer)?;
        wait.recv_timeout(REQUEST_TIMEOUT)
            .map_err(|_| HotplugError::NoAnswer)?
    }

    /// Attaches a virtio-fs device for `tag` to the daemon listening on
    /// `virtiofs-<tag>.sock` in the state directory (`pid` is shown only).
    pub(crate) fn attach_fs(&self, tag: &str, pid: u32) -> Answer {
        self.submit(Op::Attach {
            tag: tag.to_owned(),
            pid,
        })
    }

    /// Empties the slot holding `tag`.
    pub(crate) fn detach_fs(&self, tag: &str) -> Answer {
        self.submit(Op::Detach {
            tag: tag.to_owned(),
        })
    }

    /// The attached devices.
    pub(crate) fn attached(&self) -> Vec<AttachedFs> {
        lock(&self.slots)
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some(attached(i, s, s.tag.clone()?)))
            .collect()
    }

    /// Runs the waiting requests (on the activation thread).
    pub(crate) fn run_pending(&self) {
        loop {
            let Some(job) = lock(&self.jobs).pop_front() else {
                return;
            };
            let answer = match job.op {
                Op::Attach { tag, pid } => self.run_attach(tag, pid),
                Op::Detach { tag } => self.run_detach(&tag),
            };
            // The caller may have given up waiting.
            let _ = job.answer.send(answer);
        }
    }

    fn run_attach(&self, tag: String, pid: u32) -> Answer {
        let index = {
            let slots = lock(&self.slots);
            if slots.is_empty() {
                return Err(HotplugError::NoSlots);
            }
            if slots.iter().any(|s| s.tag.as_deref() == Some(tag.as_str())) {
                return Err(HotplugError::TagInUse(tag));
            }
            slots
                .iter()
                .position(|s| s.tag.is_none())
                .ok_or(HotplugError::Full(slots.len()))?
        };
        // Connecting and the first half of the handshake happen before the
        // slot is locked: vCPUs touching the window do not wait for them.
        let config = FsConfig::new(tag.clone(), PathBuf::new(), self.state_dir.clone());
        let device = VirtioFs::attach(config, pid).map_err(|source| HotplugError::Attach {
            tag: tag.clone(),
            source: Box::new(source),
        })?;
        let mut slots = lock(&self.slots);
        let slot = slots.get_mut(index).ok_or(HotplugError::NoSlots)?;
        lock(&slot.transport).fill(Box::new(device))?;
        slot.tag = Some(tag.clone());
        tracing::info!(tag = %tag, base = slot.place.base, "hot-plug: virtio-fs attached");
        Ok(attached(index, slot, tag))
    }

    fn run_detach(&self, tag: &str) -> Answer {
        let mut slots = lock(&self.slots);
        let (index, slot) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.tag.as_deref() == Some(tag))
            .ok_or_else(|| HotplugError::UnknownTag(tag.to_owned()))?;
        let device = lock(&slot.transport).empty();
        slot.tag = None;
        // Dropping the device closes the connection; the daemon ends.
        drop(device?);
        tracing::info!(tag = %tag, base = slot.place.base, "hot-plug: virtio-fs detached");
        Ok(attached(index, slot, tag.to_owned()))
    }

    /// Answers every waiting request with [`HotplugError::NoAnswer`] (the
    /// VM is going away).
    pub(crate) fn cancel(&self) {
        for job in lock(&self.jobs).drain(..) {
            let _ = job.answer.send(Err(HotplugError::NoAnswer));
        }
    }
}

fn attached(index: usize, slot: &Slot, tag: String) -> AttachedFs {
    AttachedFs {
        slot: index,
        base: slot.place.base,
        gsi: slot.place.gsi,
        tag,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use agentvm_devices::virtio::GuestMemory;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    fn hotplug(n: usize, state: &std::path::Path) -> Hotplug {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let places = (0..n)
            .map(|i| {
                let place = MmioSlot {
                    base: 0xd000_0000 + i as u64 * 0x1000,
                    size: 0x1000,
                    gsi: 10 + i as u32,
                    device_type: 0,
                };
                let t = MmioTransport::empty_slot(mem.clone(), 2).unwrap();
                (place, Arc::new(Mutex::new(t)))
            })
            .collect();
        Hotplug::new(state.into(), places, EventFd::new(EFD_NONBLOCK).unwrap())
    }

    /// Runs `op` as the activation thread would, right away.
    fn run(h: &Hotplug, op: Op) -> Answer {
        let (answer, wait) = mpsc::sync_channel(1);
        lock(&h.jobs).push_back(Job { op, answer });
        h.run_pending();
        wait.recv().unwrap()
    }

    #[test]
    fn requests_are_checked_against_the_slots() {
        let tmp = tempfile::tempdir().unwrap();
        let none = hotplug(0, tmp.path());
        assert!(matches!(
            run(
                &none,
                Op::Attach {
                    tag: "a".into(),
                    pid: 1
                }
            ),
            Err(HotplugError::NoSlots)
        ));
        let h = hotplug(2, tmp.path());
        assert!(matches!(
            run(&h, Op::Detach { tag: "a".into() }),
            Err(HotplugError::UnknownTag(_))
        ));
        // No daemon listens: nothing is filled.
        assert!(matches!(
            run(
                &h,
                Op::Attach {
                    tag: "a".into(),
                    pid: 1
                }
            ),
            Err(HotplugError::Attach { .. })
        ));
        // A tag the socket name cannot carry.
        assert!(matches!(
            run(
                &h,
                Op::Attach {
                    tag: "../x".into(),
                    pid: 1
                }
            ),
            Err(HotplugError::Attach { .. })
        ));
        assert!(h.attached().is_empty());
        assert!(lock(&h.slots)
            .iter()
            .all(|s| lock(&s.transport).is_empty_slot()));
    }

    #[test]
    fn full_slots_and_taken_tags_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hotplug(1, tmp.path());
        lock(&h.slots)[0].tag = Some("a".into());
        assert!(matches!(
            run(
                &h,
                Op::Attach {
                    tag: "a".into(),
                    pid: 1
                }
            ),
            Err(HotplugError::TagInUse(_))
        ));
        assert!(matches!(
            run(
                &h,
                Op::Attach {
                    tag: "b".into(),
                    pid: 1
                }
            ),
            Err(HotplugError::Full(1))
        ));
        assert_eq!(h.attached()[0].base, 0xd000_0000);
    }

    #[test]
    fn a_cancelled_request_is_answered() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hotplug(1, tmp.path());
        let (answer, wait) = mpsc::sync_channel(1);
        lock(&h.jobs).push_back(Job {
            op: Op::Detach { tag: "a".into() },
            answer,
        });
        h.cancel();
        assert!(matches!(wait.recv().unwrap(), Err(HotplugError::NoAnswer)));
    }
}
