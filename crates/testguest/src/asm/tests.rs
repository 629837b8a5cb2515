//! Encoding tests for the helpers: exact instruction sequences for the
//! straight-line helpers, the register contract, argument checks. What the
//! loops print is checked by running them under QEMU (`tests/qemu.rs`).
#![allow(clippy::unwrap_used)]

use iced_x86::code_asm::*;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};

use super::*;

fn decode(bitness: u32, ip: u64, code: &[u8]) -> Vec<Instruction> {
    Decoder::with_ip(bitness, code, ip, DecoderOptions::NONE)
        .into_iter()
        .collect()
}

fn codes(instrs: &[Instruction]) -> Vec<Code> {
    instrs.iter().map(|i| i.code()).collect()
}

#[test]
fn serial_print_emits_one_out_per_byte_and_reuses_al() {
    let mut a = Asm64::new().unwrap();
    a.serial_print("AAB").unwrap();
    let i = decode(64, 0x1000, &a.assemble(0x1000).unwrap());
    assert_eq!(
        codes(&i),
        [
            Code::Mov_r16_imm16,
            Code::Mov_r8_imm8,
            Code::Out_DX_AL,
            Code::Out_DX_AL,
            Code::Mov_r8_imm8,
            Code::Out_DX_AL
        ]
    );
    assert_eq!(
        (i[0].op0_register(), i[0].immediate16()),
        (Register::DX, COM1)
    );
    assert_eq!((i[1].immediate8(), i[4].immediate8()), (b'A', b'B'));
}

#[test]
fn serial_print_of_nothing_emits_nothing() {
    let mut a = Asm32::new().unwrap();
    a.serial_print("").unwrap();
    a.nop().unwrap();
    assert_eq!(a.assemble(0x1000).unwrap(), [0x90]);
}

#[test]
fn reset_writes_i8042_then_debug_exit_then_halts_forever() {
    for bitness in [32, 64] {
        let mut a = CodeAssembler::new(bitness).unwrap();
        emit_reset(&mut a).unwrap();
        let i = decode(bitness, 0x2000, &a.assemble(0x2000).unwrap());
        assert_eq!(
            codes(&i)[..6],
            [
                Code::Mov_r8_imm8,
                Code::Out_imm8_AL,
                Code::Mov_r8_imm8,
                Code::Out_imm8_AL,
                Code::Cli,
                Code::Hlt
            ]
        );
        assert_eq!(
            (i[0].immediate8(), i[1].immediate8()),
            (I8042_RESET, I8042_COMMAND_PORT as u8)
        );
        assert_eq!(
            (i[2].immediate8(), i[3].immediate8()),
            (DEBUG_EXIT_VALUE, DEBUG_EXIT_PORT as u8)
        );
        assert_eq!(i[6].near_branch_target(), i[5].ip(), "jmp back to hlt");
        assert_eq!(i.len(), 7);
    }
}

#[test]
fn report_copies_its_register_before_printing_clobbers_it() {
    for reg in [rax, rdx, rcx] {
        let mut a = Asm64::new().unwrap();
        a.report("t", reg).unwrap();
        let i = decode(64, 0, &a.assemble(0).unwrap());
        assert_eq!(i[0].code(), Code::Mov_rm64_r64);
        assert_eq!(
            (i[0].op0_register(), i[0].op1_register()),
            (Register::RDI, Register::from(reg))
        );
    }
    let mut a = Asm64::new().unwrap();
    a.report("t", rdi).unwrap();
    let i = decode(64, 0, &a.assemble(0).unwrap());
    assert_eq!(i[0].code(), Code::Mov_r16_imm16, "no self-move for rdi");
}

#[test]
fn hex_loop_rotates_a_nibble_per_digit() {
    let mut a = Asm64::new().unwrap();
    a.serial_hex(rbx).unwrap();
    let i = decode(64, 0, &a.assemble(0).unwrap());
    let rol = i.iter().find(|i| i.code() == Code::Rol_rm64_imm8).unwrap();
    assert_eq!((rol.op0_register(), rol.immediate8()), (Register::RDI, 4));
    let count = i
        .iter()
        .find(|i| i.code() == Code::Mov_r32_imm32 && i.op0_register() == Register::ECX)
        .unwrap();
    assert_eq!(count.immediate32(), 16);

    let mut b = Asm32::new().unwrap();
    b.serial_hex(ebx).unwrap();
    let i = decode(32, 0, &b.assemble(0).unwrap());
    assert!(i
        .iter()
        .any(|i| i.code() == Code::Rol_rm32_imm8 && i.op0_register() == Register::EDI));
    let count = i
        .iter()
        .find(|i| i.code() == Code::Mov_r32_imm32 && i.op0_register() == Register::ECX)
        .unwrap();
    assert_eq!(count.immediate32(), 8);
}

#[test]
fn report32_pads_to_sixteen_digits() {
    let mut a = Asm32::new().unwrap();
    a.report("k", esi).unwrap();
    let i = decode(32, 0, &a.assemble(0).unwrap());
    // The tag and padding are printed by straight-line code before the loop.
    let text: Vec<u8> = i
        .iter()
        .take_while(|i| i.code() != Code::Mov_r32_imm32)
        .filter(|i| i.code() == Code::Mov_r8_imm8 || i.code() == Code::Out_DX_AL)
        .scan(0u8, |byte, i| {
            if i.code() == Code::Mov_r8_imm8 {
                *byte = i.immediate8();
                Some(None)
            } else {
                Some(Some(*byte))
            }
        })
        .flatten()
        .collect();
    assert_eq!(text, b"k=0x00000000");
}

#[test]
fn loads_zero_extend_at_every_width() {
    let mut a = Asm64::new().unwrap();
    a.load(r12, rbx, 0x10, Width::U8).unwrap();
    a.load(r12, rbx, 0x10, Width::U16).unwrap();
    a.load(r12, rbx, 0x10, Width::U32).unwrap();
    a.load(r12, rbx, 0x10, Width::U64).unwrap();
    let i = decode(64, 0, &a.assemble(0).unwrap());
    assert_eq!(
        codes(&i),
        [
            Code::Movzx_r64_rm8,
            Code::Movzx_r64_rm16,
            Code::Mov_r32_rm32,
            Code::Mov_r64_rm64
        ]
    );
    assert_eq!(
        i[2].op0_register(),
        Register::R12D,
        "32-bit load into the low half zero-extends"
    );
    for instr in &i {
        assert_eq!(
            (instr.memory_base(), instr.memory_displacement64()),
            (Register::RBX, 0x10)
        );
    }
}

#[test]
fn low32_maps_every_gpr() {
    for (i, reg) in GPR64.iter().enumerate() {
        let low = Register::from(low32(*reg)) as u32 - Register::EAX as u32;
        let full = Register::from(*reg) as u32 - Register::RAX as u32;
        assert_eq!((low, full), (i as u32, i as u32));
    }
}

#[test]
fn asm32_refuses_what_it_cannot_do() {
    let mut a = Asm32::new().unwrap();
    assert!(matches!(
        a.load(esi, ebx, 0, Width::U64),
        Err(Error::InvalidArgument(_))
    ));
    for base in SCRATCH32 {
        assert!(matches!(
            a.report_mem("x", base, 0, Width::U64),
            Err(Error::InvalidArgument(_))
        ));
    }
    a.report_mem("x", esi, 8, Width::U64).unwrap();
    let i = decode(32, 0, &a.assemble(0).unwrap());
    let loads: Vec<_> = i
        .iter()
        .filter(|i| i.code() == Code::Mov_r32_rm32)
        .collect();
    assert_eq!(loads.len(), 2);
    assert_eq!(loads[0].memory_displacement32(), 12, "high half first");
    assert_eq!(loads[1].memory_displacement32(), 8);
}

#[test]
fn serial_cstr_stops_at_nul_or_the_limit() {
    let mut a = Asm64::new().unwrap();
    a.serial_cstr(rdi, 77).unwrap();
    a.nop().unwrap();
    let i = decode(64, 0, &a.assemble(0).unwrap());
    assert_eq!(i[0].code(), Code::Mov_r32_imm32, "no self-move for rdi");
    assert_eq!(i[0].immediate32(), 77);
    let exits: Vec<_> = i
        .iter()
        .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Je)
        .collect();
    assert_eq!(exits.len(), 2, "limit and NUL (jz)");
    let end = i.last().unwrap().ip();
    assert!(
        exits.iter().all(|j| j.near_branch_target() == end),
        "both leave to the code after the loop"
    );
}

#[test]
fn control_registers_and_msrs_are_read_into_rdi_or_rax() {
    let mut a = Asm64::new().unwrap();
    a.report_cr(ControlReg::Cr4).unwrap();
    a.report_msr("efer", 0xc000_0080).unwrap();
    let i = decode(64, 0, &a.assemble(0).unwrap());
    assert_eq!(i[0].code(), Code::Mov_r64_cr);
    assert_eq!(
        (i[0].op0_register(), i[0].op1_register()),
        (Register::RDI, Register::CR4)
    );
    assert!(i.iter().any(|i| i.code() == Code::Rdmsr));
}
