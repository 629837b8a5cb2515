//! Guest program builders over iced-x86's [`CodeAssembler`].
//!
//! [`Asm64`] writes long-mode code, [`Asm32`] 32-bit protected-mode code (the
//! PVH entry). Both dereference to the [`CodeAssembler`], so raw instructions
//! mix freely with the helpers:
//!
//! ```
//! use agentvm_testguest::asm::{Asm64, Width};
//! use iced_x86::code_asm::*;
//!
//! # fn main() -> Result<(), agentvm_testguest::Error> {
//! let mut a = Asm64::new()?;
//! a.serial_print("hello\n")?;
//! a.mov(rbx, rsi)?; // raw instruction: the zero page pointer
//! a.report_mem("e820_entries", rbx, 0x1e8, Width::U8)?;
//! a.reset()?;
//! let code = a.assemble(0x100_0000)?;
//! assert!(!code.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! # What the guest may do
//!
//! The host's KVM (PVM) runs tiny guests that use only port I/O, MMIO and
//! `hlt`: no interrupts, no `int`, no exceptions, no stack. The helpers
//! therefore emit straight-line code with small inline loops and never `call`
//! or `push`.
//!
//! # Register contract
//!
//! Helpers clobber the *scratch* registers `rax`, `rcx`, `rdx`, `rdi` (in
//! [`Asm32`]: `eax`, `ecx`, `edx`, `edi`) and the flags. Keep values that must
//! survive a helper in `rbx`, `rsi`, `rbp` or `r8`–`r15` (`ebx`, `esi`, `ebp`).
//! A helper's own register argument may be a scratch register: it is copied
//! before anything is clobbered. `rsp` is never used: the boot protocols do
//! not promise a stack.
//!
//! # Output format
//!
//! [`Asm64::report`] and friends print one line `tag=0x` followed by exactly
//! 16 lowercase hex digits, in both flavours, so every number a test reads
//! back has one shape (see [`crate::report`]).

use std::ops::{Deref, DerefMut};

use iced_x86::code_asm::{
    al, byte_ptr, cr0, cr3, cr4, cs, dword_ptr, dx, eax, ebp, ebx, ecx, edi, edx, esi, esp,
    qword_ptr, r10, r10d, r11, r11d, r12, r12d, r13, r13d, r14, r14d, r15, r15d, r8, r8d, r9, r9d,
    rax, rbp, rbx, rcx, rdi, rdx, rsi, rsp, word_ptr, AsmRegister32, AsmRegister64, CodeAssembler,
};

use crate::Error;

/// COM1's data port: bytes written here appear on the VM's serial console.
pub const COM1: u16 = 0x3f8;
/// The i8042 command port; [`I8042_RESET`] written here resets the CPU,
/// which ends the VM in agentvm.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The i8042 "pulse reset line" command.
pub const I8042_RESET: u8 = 0xfe;
/// QEMU's `isa-debug-exit` port when started with
/// `-device isa-debug-exit,iobase=0xf4`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The value written to [`DEBUG_EXIT_PORT`]: QEMU then exits with status
/// `(0 << 1) | 1 == 1`.
pub const DEBUG_EXIT_VALUE: u8 = 0;
/// The longest NUL-terminated string [`Asm64::serial_cstr`] copies when the
/// caller does not care.
pub const CSTR_MAX: u32 = 256;

/// Width of a memory load; loads always zero-extend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// One byte.
    U8,
    /// Two bytes, little endian.
    U16,
    /// Four bytes, little endian.
    U32,
    /// Eight bytes, little endian.
    U64,
}

/// A control register the programs read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlReg {
    /// `cr0`: PE, PG and friends.
    Cr0,
    /// `cr3`: the page table root.
    Cr3,
    /// `cr4`: PAE and friends.
    Cr4,
}

// ---------------------------------------------------------------------------
// Emitters shared by the flavours. `emit_serial` and `emit_reset` use only
// `dx`/`al`, immediates and relative jumps: valid in 16-, 32- and 64-bit
// code, and byte-for-byte identical in 32- and 64-bit code (the bzImage
// wrong-entry stub relies on that).
// ---------------------------------------------------------------------------

/// Writes `bytes` to COM1 with one `out dx, al` per byte. Clobbers `al`, `dx`.
///
/// No LSR polling: agentvm's and QEMU's UARTs accept bytes at once.
pub(crate) fn emit_serial(a: &mut CodeAssembler, bytes: &[u8]) -> Result<(), Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    a.mov(dx, u32::from(COM1))?;
    let mut last = None;
    for &b in bytes {
        // Runs of one byte (padding zeros, "\n\n") reuse `al`.
        if last != Some(b) {
            a.mov(al, u32::from(b))?;
            last = Some(b);
        }
        a.out(dx, al)?;
    }
    Ok(())
}

/// Ends the VM: i8042 reset (agentvm), `isa-debug-exit` (QEMU), then a
/// `cli; hlt` loop for anything else. Clobbers `al`.
pub(crate) fn emit_reset(a: &mut CodeAssembler) -> Result<(), Error> {
    a.mov(al, u32::from(I8042_RESET))?;
    a.out(u32::from(I8042_COMMAND_PORT), al)?;
    a.mov(al, u32::from(DEBUG_EXIT_VALUE))?;
    a.out(u32::from(DEBUG_EXIT_PORT), al)?;
    emit_halt_forever(a)
}

/// `cli; hlt` in a loop: with interrupts off the vCPU sleeps in the host's
/// KVM and never wakes.
pub(crate) fn emit_halt_forever(a: &mut CodeAssembler) -> Result<(), Error> {
    a.cli()?;
    let mut halt = a.create_label();
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    Ok(())
}

/// Prints `rdi` (`long`: 16 digits) or `edi` (8 digits), already loaded, as
/// lowercase hex, most significant nibble first, with `rol` in a loop.
/// Clobbers `eax`, `ecx`, `edx`; `rdi`/`edi` ends up rotated back to its value.
fn emit_hex_loop(a: &mut CodeAssembler, long: bool) -> Result<(), Error> {
    a.mov(dx, u32::from(COM1))?;
    a.mov(ecx, if long { 16u32 } else { 8 })?;
    let mut top = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut top)?;
    if long {
        a.rol(rdi, 4)?;
    } else {
        a.rol(edi, 4)?;
    }
    a.mov(eax, edi)?;
    a.and(al, 0x0f)?;
    a.add(al, u32::from(b'0'))?;
    a.cmp(al, u32::from(b'9'))?;
    a.jbe(out)?;
    a.add(al, u32::from(b'a' - b'9' - 1))?;
    a.set_label(&mut out)?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    Ok(())
}

/// Copies bytes from `[rdi]`/`[edi]` (already loaded) to COM1 until a NUL
/// or `max` bytes. Clobbers `eax`, `ecx`, `edx`, `rdi`.
fn emit_cstr_loop(a: &mut CodeAssembler, max: u32, long: bool) -> Result<(), Error> {
    a.mov(ecx, max)?;
    a.mov(dx, u32::from(COM1))?;
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut top)?;
    a.test(ecx, ecx)?;
    a.jz(done)?;
    if long {
        a.mov(al, byte_ptr(rdi))?;
    } else {
        a.mov(al, byte_ptr(edi))?;
    }
    a.test(al, al)?;
    a.jz(done)?;
    a.out(dx, al)?;
    if long {
        a.inc(rdi)?;
    } else {
        a.inc(edi)?;
    }
    a.dec(ecx)?;
    a.jmp(top)?;
    a.set_label(&mut done)?;
    // A label needs an instruction; this one has no bytes.
    a.zero_bytes()?;
    Ok(())
}

fn tag_prefix(tag: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(tag.len() + 3);
    line.extend_from_slice(tag.as_bytes());
    line.extend_from_slice(b"=0x");
    line
}

// ---------------------------------------------------------------------------
// 64-bit
// ---------------------------------------------------------------------------

const GPR64: [AsmRegister64; 16] = [
    rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
];
const GPR64_LOW32: [AsmRegister32; 16] = [
    eax, ecx, edx, ebx, esp, ebp, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d, r14d, r15d,
];

/// The 32-bit half of a 64-bit general purpose register (`rbx` → `ebx`).
fn low32(reg: AsmRegister64) -> AsmRegister32 {
    GPR64
        .iter()
        .position(|&r| r == reg)
        .map_or(eax, |i| GPR64_LOW32[i])
}

/// A long-mode (64-bit) guest program under construction.
///
/// Code is position dependent: [`Asm64::assemble`] takes the address the
/// bytes will run at.
pub struct Asm64 {
    code: CodeAssembler,
}

impl std::fmt::Debug for Asm64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asm64")
            .field("instructions", &self.code.instructions().len())
            .finish()
    }
}

impl Deref for Asm64 {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.code
    }
}

impl DerefMut for Asm64 {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.code
    }
}

impl Asm64 {
    /// Starts an empty 64-bit program.
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            code: CodeAssembler::new(64)?,
        })
    }

    /// Prints `text` on COM1. Clobbers `rax`, `rdx`.
    pub fn serial_print(&mut self, text: &str) -> Result<(), Error> {
        emit_serial(&mut self.code, text.as_bytes())
    }

    /// Prints `reg` as 16 lowercase hex digits (no prefix, no newline).
    pub fn serial_hex(&mut self, reg: AsmRegister64) -> Result<(), Error> {
        if reg != rdi {
            self.code.mov(rdi, reg)?;
        }
        emit_hex_loop(&mut self.code, true)
    }

    /// Prints `tag=0x%016x\n` with the value of `reg`.
    pub fn report(&mut self, tag: &str, reg: AsmRegister64) -> Result<(), Error> {
        // Copy first: printing the tag clobbers rax and rdx.
        if reg != rdi {
            self.code.mov(rdi, reg)?;
        }
        emit_serial(&mut self.code, &tag_prefix(tag))?;
        emit_hex_loop(&mut self.code, true)?;
        emit_serial(&mut self.code, b"\n")
    }

    /// Loads `width` bytes at `[base + offset]` into `dst`, zero-extended.
    pub fn load(
        &mut self,
        dst: AsmRegister64,
        base: AsmRegister64,
        offset: i32,
        width: Width,
    ) -> Result<(), Error> {
        let a = &mut self.code;
        match width {
            Width::U8 => a.movzx(dst, byte_ptr(base + offset))?,
            Width::U16 => a.movzx(dst, word_ptr(base + offset))?,
            // A 32-bit load zero-extends into the full register.
            Width::U32 => a.mov(low32(dst), dword_ptr(base + offset))?,
            Width::U64 => a.mov(dst, qword_ptr(base + offset))?,
        }
        Ok(())
    }

    /// Prints `tag=0x%016x\n` with the `width`-byte value at `[base + offset]`.
    pub fn report_mem(
        &mut self,
        tag: &str,
        base: AsmRegister64,
        offset: i32,
        width: Width,
    ) -> Result<(), Error> {
        self.load(rdi, base, offset, width)?;
        self.report(tag, rdi)
    }

    /// Copies the NUL-terminated string at `[ptr]` to COM1, at most
    /// `max_len` bytes, without the NUL.
    pub fn serial_cstr(&mut self, ptr: AsmRegister64, max_len: u32) -> Result<(), Error> {
        if ptr != rdi {
            self.code.mov(rdi, ptr)?;
        }
        emit_cstr_loop(&mut self.code, max_len, true)
    }

    /// Prints `cr0=`, `cr3=` or `cr4=` `0x%016x\n` for that control register.
    ///
    /// KVM (PVM included) handles control register reads without an exit
    /// to the VMM; with the optional EFER read they are the only privileged
    /// instructions the ready-made programs use.
    pub fn report_cr(&mut self, which: ControlReg) -> Result<(), Error> {
        let (reg, tag) = match which {
            ControlReg::Cr0 => (cr0, "cr0"),
            ControlReg::Cr3 => (cr3, "cr3"),
            ControlReg::Cr4 => (cr4, "cr4"),
        };
        self.code.mov(rdi, reg)?;
        self.report(tag, rdi)
    }

    /// Prints `tag=0x%016x\n` for the model-specific register `msr`.
    ///
    /// `rdmsr` may exit from the guest into KVM (not the VMM); the
    /// ready-made programs read EFER only when asked to.
    pub fn report_msr(&mut self, tag: &str, msr: u32) -> Result<(), Error> {
        let a = &mut self.code;
        a.mov(ecx, msr)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        self.report(tag, rax)
    }

    /// Prints `tag=0x%016x\n` for the current `cs` selector.
    pub fn report_cs(&mut self, tag: &str) -> Result<(), Error> {
        self.code.mov(edi, cs)?;
        self.report(tag, rdi)
    }

    /// Ends the VM: `out 0x64, 0xfe` (i8042 reset: agentvm stops), then
    /// `out 0xf4, 0` (QEMU `isa-debug-exit`), then `cli; hlt` forever.
    pub fn reset(&mut self) -> Result<(), Error> {
        emit_reset(&mut self.code)
    }

    /// Assembles the program to run at `ip`.
    pub fn assemble(&mut self, ip: u64) -> Result<Vec<u8>, Error> {
        Ok(self.code.assemble(ip)?)
    }
}

// ---------------------------------------------------------------------------
// 32-bit
// ---------------------------------------------------------------------------

/// A 32-bit protected-mode guest program under construction (the PVH entry:
/// paging off, flat segments).
///
/// Numbers are still printed as 16 hex digits so every report has one shape.
pub struct Asm32 {
    code: CodeAssembler,
}

impl std::fmt::Debug for Asm32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asm32")
            .field("instructions", &self.code.instructions().len())
            .finish()
    }
}

impl Deref for Asm32 {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.code
    }
}

impl DerefMut for Asm32 {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.code
    }
}

const SCRATCH32: [AsmRegister32; 4] = [eax, ecx, edx, edi];

impl Asm32 {
    /// Starts an empty 32-bit program.
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            code: CodeAssembler::new(32)?,
        })
    }

    /// Prints `text` on COM1. Clobbers `eax`, `edx`.
    pub fn serial_print(&mut self, text: &str) -> Result<(), Error> {
        emit_serial(&mut self.code, text.as_bytes())
    }

    /// Prints `reg` as 8 lowercase hex digits (no prefix, no newline).
    pub fn serial_hex(&mut self, reg: AsmRegister32) -> Result<(), Error> {
        if reg != edi {
            self.code.mov(edi, reg)?;
        }
        emit_hex_loop(&mut self.code, false)
    }

    /// Prints `tag=0x00000000%08x\n` with the value of `reg`.
    pub fn report(&mut self, tag: &str, reg: AsmRegister32) -> Result<(), Error> {
        if reg != edi {
            self.code.mov(edi, reg)?;
        }
        let mut prefix = tag_prefix(tag);
        prefix.extend_from_slice(b"00000000");
        emit_serial(&mut self.code, &prefix)?;
        emit_hex_loop(&mut self.code, false)?;
        emit_serial(&mut self.code, b"\n")
    }

    /// Loads `width` bytes at `[base + offset]` into `dst`, zero-extended.
    /// [`Width::U64`] is refused: a 32-bit register holds half of it.
    pub fn load(
        &mut self,
        dst: AsmRegister32,
        base: AsmRegister32,
        offset: i32,
        width: Width,
    ) -> Result<(), Error> {
        let a = &mut self.code;
        match width {
            Width::U8 => a.movzx(dst, byte_ptr(base + offset))?,
            Width::U16 => a.movzx(dst, word_ptr(base + offset))?,
            Width::U32 => a.mov(dst, dword_ptr(base + offset))?,
            Width::U64 => {
                return Err(Error::InvalidArgument(
                    "a 32-bit register cannot hold a u64 load",
                ))
            }
        }
        Ok(())
    }

    /// Prints `tag=0x%016x\n` with the `width`-byte value at `[base + offset]`.
    ///
    /// A [`Width::U64`] value is printed high half first; `base` must then
    /// not be a scratch register (`eax`, `ecx`, `edx`, `edi`), because it is
    /// read again after the high half was printed.
    pub fn report_mem(
        &mut self,
        tag: &str,
        base: AsmRegister32,
        offset: i32,
        width: Width,
    ) -> Result<(), Error> {
        if width != Width::U64 {
            self.load(edi, base, offset, width)?;
            return self.report(tag, edi);
        }
        if SCRATCH32.contains(&base) {
            return Err(Error::InvalidArgument(
                "a u64 report_mem base must not be a scratch register",
            ));
        }
        self.code
            .mov(edi, dword_ptr(base + offset.wrapping_add(4)))?;
        emit_serial(&mut self.code, &tag_prefix(tag))?;
        emit_hex_loop(&mut self.code, false)?;
        self.code.mov(edi, dword_ptr(base + offset))?;
        emit_hex_loop(&mut self.code, false)?;
        emit_serial(&mut self.code, b"\n")
    }

    /// Copies the NUL-terminated string at `[ptr]` to COM1, at most
    /// `max_len` bytes, without the NUL.
    pub fn serial_cstr(&mut self, ptr: AsmRegister32, max_len: u32) -> Result<(), Error> {
        if ptr != edi {
            self.code.mov(edi, ptr)?;
        }
        emit_cstr_loop(&mut self.code, max_len, false)
    }

    /// Prints `cr0=0x%016x\n` (PVH enters with PE set and PG clear).
    pub fn report_cr0(&mut self) -> Result<(), Error> {
        self.code.mov(edi, cr0)?;
        self.report("cr0", edi)
    }

    /// Prints `tag=0x%016x\n` for the current `cs` selector.
    pub fn report_cs(&mut self, tag: &str) -> Result<(), Error> {
        self.code.mov(edi, cs)?;
        self.report(tag, edi)
    }

    /// Ends the VM exactly like [`Asm64::reset`].
    pub fn reset(&mut self) -> Result<(), Error> {
        emit_reset(&mut self.code)
    }

    /// Assembles the program to run at `ip` (a 32-bit address).
    pub fn assemble(&mut self, ip: u32) -> Result<Vec<u8>, Error> {
        Ok(self.code.assemble(u64::from(ip))?)
    }
}

#[cfg(test)]
mod tests;
