use super::*;
use crate::ErrorCode;

fn samples() -> Vec<Frame> {
    vec![
        Frame::hello(),
        Frame::Hello { version: 0xbeef },
        Frame::Start(Start {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
            env: vec![(b"A".to_vec(), b"1".to_vec()), (b"EMPTY".to_vec(), vec![])],
            cwd: Some(b"/tmp".to_vec()),
            user: Some("nobody".into()),
            tty: Some(WinSize { rows: 24, cols: 80 }),
        }),
        Frame::Start(Start {
            argv: vec![b"true".to_vec()],
            ..Start::default()
        }),
        Frame::Stdin(b"hello".to_vec()),
        Frame::Stdin(vec![7; MAX_DATA]),
        Frame::Stdin(vec![]),
        Frame::StdinEof,
        Frame::Resize(WinSize {
            rows: 50,
            cols: 132,
        }),
        Frame::Signal(15),
        Frame::Configure {
            env: vec![(b"API_KEY".to_vec(), b"placeholder".to_vec())],
            ca: None,
        },
        Frame::Configure {
            env: vec![],
            ca: None,
        },
        Frame::Configure {
            env: vec![(b"K".to_vec(), b"v".to_vec())],
            ca: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
        },
        Frame::Poweroff,
        Frame::Identity(crate::frame::Identity {
            known_hosts: b"github.com ssh-ed25519 AAAA\n".to_vec(),
            git_name: Some("Zoë \"Z\" Doe".as_bytes().to_vec()),
            git_email: None,
        }),
        Frame::Identity(crate::frame::Identity::default()),
        Frame::File(FileCopy {
            target: b"~/.gitconfig".to_vec(),
            mode: 0o644,
            content: b"[user]\n\tname = Z\n".to_vec(),
        }),
        Frame::File(FileCopy {
            target: b"/etc/npmrc".to_vec(),
            mode: 0,
            content: vec![7; MAX_FILE],
        }),
        Frame::Mount(LiveMount {
            base: 0xc000_5000,
            tag: "live0".into(),
            target: b"/mnt/live".to_vec(),
            read_only: true,
        }),
        Frame::Mount(LiveMount::default()),
        Frame::Unmount(LiveUnmount {
            base: u64::MAX,
            target: b"/mnt/\xff".to_vec(),
        }),
        Frame::Started { pid: 4242 },
        Frame::Stdout(vec![0, 1, 2, 255]),
        Frame::Stderr(b"oops\n".to_vec()),
        Frame::Exit(ExitStatus::Code(0)),
        Frame::Exit(ExitStatus::Code(-1)),
        Frame::Exit(ExitStatus::Signal(9)),
        Frame::error(ErrorCode::SpawnFailed, "no such file"),
        Frame::error(ErrorCode::Other(999), ""),
        Frame::Ack,
    ]
}

#[test]
fn round_trip_every_frame() {
    for f in samples() {
        let bytes = f.encode().unwrap();
        assert_eq!(bytes[4], f.kind());
        let (back, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, f);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn concatenated_frames_decode_in_order() {
    let mut buf = Vec::new();
    for f in samples() {
        f.encode_into(&mut buf).unwrap();
    }
    let mut off = 0;
    let mut got = Vec::new();
    while let Some((f, n)) = decode(&buf[off..]).unwrap() {
        got.push(f);
        off += n;
    }
    assert_eq!(off, buf.len());
    assert_eq!(got, samples());
}

#[test]
fn every_prefix_is_incomplete_not_an_error() {
    for f in samples() {
        let bytes = f.encode().unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "{f:?} cut at {cut}");
        }
    }
}

/// A frame whose header length is shortened (payload truncated inside a
/// field) is an error, never a panic.
#[test]
fn truncated_payloads_are_errors() {
    for f in samples() {
        let bytes = f.encode().unwrap();
        let len = bytes.len() - HEADER_LEN;
        for short in 0..len {
            let mut b = bytes[..HEADER_LEN + short].to_vec();
            b[..4].copy_from_slice(&(short as u32).to_le_bytes());
            match decode(&b) {
                // Data frames and some fixed frames decode fine when shorter.
                Ok(Some(_)) => {}
                Err(DecodeError::Truncated(k)) | Err(DecodeError::Invalid { kind: k, .. }) => {
                    assert_eq!(k, f.kind())
                }
                other => panic!("{f:?} shortened to {short}: {other:?}"),
            }
        }
    }
}

#[test]
fn oversized_header_rejected_before_payload() {
    let mut h = ((MAX_PAYLOAD + 1) as u32).to_le_bytes().to_vec();
    h.push(kind::STDIN);
    assert_eq!(
        decode(&h),
        Err(DecodeError::TooLarge((MAX_PAYLOAD + 1) as u32))
    );
    let mut h = u32::MAX.to_le_bytes().to_vec();
    h.push(kind::START);
    assert_eq!(decode(&h), Err(DecodeError::TooLarge(u32::MAX)));
    let mut ok = (MAX_PAYLOAD as u32).to_le_bytes().to_vec();
    ok.push(kind::START);
    assert_eq!(decode(&ok), Ok(None), "exactly the limit is allowed");
}

#[test]
fn data_frames_over_chunk_limit() {
    assert_eq!(
        Frame::Stdout(vec![0; MAX_DATA + 1]).encode(),
        Err(EncodeError::DataTooLarge(MAX_DATA + 1))
    );
    let mut b = ((MAX_DATA + 1) as u32).to_le_bytes().to_vec();
    b.push(kind::STDOUT);
    b.resize(HEADER_LEN + MAX_DATA + 1, 0);
    assert_eq!(decode(&b), Err(DecodeError::DataTooLarge(MAX_DATA + 1)));
    assert!(matches!(
        data_header(kind::STDOUT, MAX_DATA + 1),
        Err(EncodeError::DataTooLarge(_))
    ));
}

#[test]
fn oversized_start_refused_by_encoder() {
    let f = Frame::Start(Start {
        argv: vec![vec![b'x'; MAX_PAYLOAD]],
        ..Start::default()
    });
    let mut out = vec![1, 2, 3];
    assert!(matches!(
        f.encode_into(&mut out),
        Err(EncodeError::TooLarge(_))
    ));
    assert_eq!(out, [1, 2, 3], "buffer left as it was");
}

#[test]
fn huge_counts_do_not_allocate() {
    // argc = u32::MAX in a 13-byte payload.
    let mut p = vec![1u8, 24, 0, 80, 0];
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode_payload(kind::START, &p),
        Err(DecodeError::Truncated(kind::START))
    );
    let p = u32::MAX.to_le_bytes();
    assert_eq!(
        decode_payload(kind::CONFIGURE, &p),
        Err(DecodeError::Truncated(kind::CONFIGURE))
    );
}

#[test]
fn trailing_unknown_and_invalid() {
    let mut b = Frame::Signal(2).encode().unwrap();
    b.push(0);
    b[0] += 1;
    assert_eq!(decode(&b), Err(DecodeError::TrailingBytes(kind::SIGNAL)));
    assert_eq!(
        decode(&[0, 0, 0, 0, 0x7f]),
        Err(DecodeError::UnknownType(0x7f))
    );
    assert!(matches!(
        decode(&[5, 0, 0, 0, kind::EXIT, 2, 0, 0, 0, 0]),
        Err(DecodeError::Invalid { .. })
    ));
    // Start with argc 0.
    let mut p = vec![0u8, 0, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        decode_payload(kind::START, &p),
        Err(DecodeError::Invalid {
            what: "empty argv",
            ..
        })
    ));
}

#[test]
fn configure_carries_a_ca_only_when_there_is_one() {
    let env = vec![(b"K".to_vec(), b"v".to_vec())];
    // Without a CA the frame is the one agents before the field took.
    let old = Frame::Configure {
        env: env.clone(),
        ca: None,
    }
    .encode()
    .unwrap();
    let mut legacy = vec![1, 0, 0, 0, 1, 0, 0, 0, b'K', 1, 0, 0, 0, b'v'];
    legacy.splice(0..0, [14, 0, 0, 0, kind::CONFIGURE]);
    assert_eq!(old, legacy);
    // With one: the env, then a present `opt`.
    let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_vec();
    let with = Frame::Configure {
        env: env.clone(),
        ca: Some(pem.clone()),
    };
    let bytes = with.encode().unwrap();
    assert_eq!(&bytes[..HEADER_LEN + 14], {
        let mut h = legacy.clone();
        h[0] = (bytes.len() - HEADER_LEN) as u8;
        h
    });
    assert_eq!(bytes[HEADER_LEN + 14], 1);
    assert_eq!(decode(&bytes).unwrap().unwrap().0, with);
    // Malformed: an explicit absent flag, a bad flag, a CA over the limit,
    // a CA cut short, bytes after it.
    let payload = |tail: &[u8]| {
        let mut p = legacy[HEADER_LEN..].to_vec();
        p.extend_from_slice(tail);
        p
    };
    for (tail, want) in [
        (&[0u8][..], "absent"),
        (&[2u8][..], "flag"),
        (&[1, 5, 0, 0, 0, b'a'][..], "truncated"),
        (&[1, 1, 0, 0, 0, b'a', b'b'][..], "trailing"),
    ] {
        let e = decode_payload(kind::CONFIGURE, &payload(tail)).unwrap_err();
        assert!(e.to_string().contains(want), "{tail:?}: {e}");
    }
    let mut big = vec![1u8];
    big.extend_from_slice(&((MAX_CA + 1) as u32).to_le_bytes());
    big.resize(big.len() + MAX_CA + 1, b'A');
    let e = decode_payload(kind::CONFIGURE, &payload(&big)).unwrap_err();
    assert!(e.to_string().contains("CA over the limit"), "{e}");
    let too_big = Frame::Configure {
        env,
        ca: Some(vec![b'A'; MAX_CA + 1]),
    };
    assert_eq!(too_big.encode(), Err(EncodeError::CaTooLarge(MAX_CA + 1)));
}

/// Pseudo-random bytes and mutated valid frames: decode returns, never panics,
/// and whatever it accepts re-encodes to the same bytes.
#[test]
fn garbage_never_panics() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid: Vec<Vec<u8>> = samples().iter().map(|f| f.encode().unwrap()).collect();
    for i in 0..20_000 {
        let mut b = if i % 2 == 0 {
            let len = (next() % 64) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if b.len() >= 4 {
                let n = (next() % 80) as u32;
                b[..4].copy_from_slice(&n.to_le_bytes());
            }
            b
        } else {
            valid[(next() as usize) % valid.len()].clone()
        };
        if !b.is_empty() {
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
        }
        if let Ok(Some((f, n))) = decode(&b) {
            if f.kind() == kind::ERROR {
                continue; // lossy UTF-8 may change the message bytes
            }
            assert_eq!(f.encode().unwrap(), b[..n].to_vec(), "{f:?}");
        }
    }
}

#[test]
fn error_codes_round_trip() {
    for n in 0..20u16 {
        assert_eq!(ErrorCode::from_wire(n).to_wire(), n);
    }
}

#[test]
fn shell_codes() {
    assert_eq!(ExitStatus::Code(7).shell_code(), 7);
    assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
}

/// A `File` frame with `f`'s fields, bypassing the encoder's checks.
fn raw_file(target: &[u8], mode: u32, content_len: usize) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(target.len() as u32).to_le_bytes());
    payload.extend_from_slice(target);
    payload.extend_from_slice(&mode.to_le_bytes());
    payload.extend_from_slice(&(content_len as u32).to_le_bytes());
    payload.resize(payload.len() + content_len, b'x');
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.push(kind::FILE);
    out.extend_from_slice(&payload);
    out
}

#[test]
fn file_frames_are_bounded_on_both_sides() {
    // The good one decodes.
    let ok = raw_file(b"~/.npmrc", 0o600, 3);
    assert!(matches!(decode(&ok), Ok(Some((Frame::File(_), _)))));
    for (target, mode, len) in [
        (&b"relative/path"[..], 0o644, 1),
        (b"~/../etc/shadow", 0o644, 1),
        (b"/etc/../etc/passwd", 0o644, 1),
        (b"/a/./b", 0o644, 1),
        (b"/a//b", 0o644, 1),
        (b"/a/", 0o644, 1),
        (b"/", 0o644, 1),
        (b"~", 0o644, 1),
        (b"~/", 0o644, 1),
        (b"~root/x", 0o644, 1),
        (b"/a\0b", 0o644, 1),
        (b"/bin/su", 0o4755, 1),
        (b"/x", 0o2755, 1),
        (b"/x", 0o1777, 1),
        (b"/x", 0o644, MAX_FILE + 1),
    ] {
        let bytes = raw_file(target, mode, len);
        assert!(
            matches!(
                decode(&bytes),
                Err(DecodeError::Invalid {
                    kind: kind::FILE,
                    ..
                })
            ),
            "{:?} {mode:o} {len} decoded",
            String::from_utf8_lossy(target)
        );
        let frame = Frame::File(FileCopy {
            target: target.to_vec(),
            mode,
            content: vec![0; len],
        });
        assert!(
            matches!(frame.encode(), Err(EncodeError::BadFile(_))),
            "{:?} encoded",
            String::from_utf8_lossy(target)
        );
    }
    let long = [b"/".as_slice(), &[b'a'; MAX_FILE_TARGET]].concat();
    assert!(decode(&raw_file(&long, 0o644, 0)).is_err());
    // A content length beyond the payload is truncated, not an allocation.
    let mut lying = raw_file(b"/x", 0o644, 0);
    let at = lying.len() - 4;
    lying[at..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode(&lying), Err(DecodeError::Truncated(kind::FILE)));
    // The largest target with the largest content still fits in a frame.
    let biggest = Frame::File(FileCopy {
        target: [b"/".as_slice(), &[b'a'; MAX_FILE_TARGET - 1]].concat(),
        mode: 0o777,
        content: vec![1; MAX_FILE],
    });
    assert!(biggest.encode().is_ok());
}

#[test]
fn live_mount_frames_refuse_bad_fields() {
    let mut good = Frame::Mount(LiveMount {
        base: 1,
        tag: "t".into(),
        target: b"/m".to_vec(),
        read_only: false,
    })
    .encode()
    .unwrap();
    // read_only 2.
    *good.last_mut().unwrap() = 2;
    assert!(matches!(decode(&good), Err(DecodeError::Invalid { .. })));
    // A tag that is not UTF-8.
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0, 0, 0xff]);
    p.extend_from_slice(&[0, 0, 0, 0, 0]);
    assert!(matches!(
        decode_payload(kind::MOUNT, &p),
        Err(DecodeError::Invalid { .. })
    ));
    // A target length beyond the payload.
    let mut p = 1u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(
        decode_payload(kind::UNMOUNT, &p),
        Err(DecodeError::Truncated(_))
    ));
    // A short base.
    assert!(matches!(
        decode_payload(kind::UNMOUNT, &[1, 2, 3]),
        Err(DecodeError::Truncated(_))
    ));
}
