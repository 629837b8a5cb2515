//! A device that records what its transport does to it, for transport tests.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::QueueState;

use crate::virtio::{
    read_config_from, ActivateError, ActivationContext, InterruptKind, VirtioDevice,
    VirtioInterrupt,
};

/// What the device received at one activation.
#[derive(Debug, Clone)]
pub struct MockActivation {
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// The queues handed over, in order.
    pub queues: Vec<QueueState>,
}

#[derive(Default)]
struct State {
    activations: Vec<MockActivation>,
    resets: usize,
    retires: usize,
    config: Vec<u8>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

/// A [`VirtioDevice`] with no behaviour: it offers what it is told, keeps a
/// writable config space, and logs activations and resets where a
/// [`MockHandle`] can see them.
pub struct MockDevice {
    device_type: u32,
    features: u64,
    queue_max_sizes: Vec<u16>,
    required_queues: Option<usize>,
    state: Arc<Mutex<State>>,
}

impl MockDevice {
    /// A device of `device_type` offering `features` with one queue per
    /// entry of `queue_max_sizes`.
    pub fn new(device_type: u32, features: u64, queue_max_sizes: &[u16]) -> Self {
        MockDevice {
            device_type,
            features,
            queue_max_sizes: queue_max_sizes.to_vec(),
            required_queues: None,
            state: Arc::default(),
        }
    }

    /// Starts the config space with `bytes` (the driver may overwrite them).
    pub fn with_config(self, bytes: &[u8]) -> Self {
        lock(&self.state).config = bytes.to_vec();
        self
    }

    /// Refuses activation unless exactly `n` queues are ready.
    pub fn requiring_queues(mut self, n: usize) -> Self {
        self.required_queues = Some(n);
        self
    }

    /// A handle to watch the device after it moved into a transport.
    pub fn handle(&self) -> MockHandle {
        MockHandle {
            state: self.state.clone(),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test that panicked while holding the lock has failed already.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl VirtioDevice for MockDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&lock(&self.state).config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut state = lock(&self.state);
        for (i, byte) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|at| state.config.get_mut(at)) {
                *slot = *byte;
            }
        }
    }

    fn activate(&mut self, ctx: ActivationContext) -> Result<(), ActivateError> {
        let mut state = lock(&self.state);
        if state.interrupt.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if let Some(expected) = self.required_queues {
            ctx.check_queue_count(expected)?;
        }
        state.activations.push(MockActivation {
            acked_features: ctx.acked_features,
            queues: ctx.queues.iter().map(|q| q.queue.state()).collect(),
        });
        state.interrupt = Some(ctx.interrupt);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let mut state = lock(&self.state);
        state.resets += 1;
        state.interrupt = None;
        true
    }

    fn retire(&mut self) {
        lock(&self.state).retires += 1;
    }
}

/// Watches (and pokes) a [`MockDevice`] from the test.
#[derive(Clone)]
pub struct MockHandle {
    state: Arc<Mutex<State>>,
}

impl MockHandle {
    /// Every activation so far.
    pub fn activations(&self) -> Vec<MockActivation> {
        lock(&self.state).activations.clone()
    }

    /// How many times the transport reset the device.
    pub fn resets(&self) -> usize {
        lock(&self.state).resets
    }

    /// How many resets the transport finished with a retire.
    pub fn retires(&self) -> usize {
        lock(&self.state).retires
    }

    /// Whether the device is between an activation and a reset.
    pub fn is_active(&self) -> bool {
        lock(&self.state).interrupt.is_some()
    }

    /// The config space now.
    pub fn config(&self) -> Vec<u8> {
        lock(&self.state).config.clone()
    }

    /// Replaces config bytes from `offset` as the device would, and signals
    /// a configuration change if the device is active.
    pub fn update_config(&self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let interrupt = {
            let mut state = lock(&self.state);
            let end = offset + bytes.len();
            if state.config.len() < end {
                state.config.resize(end, 0);
            }
            state.config[offset..end].copy_from_slice(bytes);
            state.interrupt.clone()
        };
        match interrupt {
            Some(i) => i.trigger(InterruptKind::Config),
            None => Ok(()),
        }
    }

    /// Signals `kind` through the interrupt the device got at activation.
    pub fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        let interrupt = lock(&self.state).interrupt.clone();
        match interrupt {
            Some(i) => i.trigger(kind),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "mock device is not active",
            )),
        }
    }
}
