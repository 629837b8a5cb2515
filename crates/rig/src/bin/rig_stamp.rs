//! `rig-stamp`: runs inside L1 around each VMM boot. Passes the console
//! through, kills the VMM after a timeout, runs the boot's script once the
//! guest is up, and prints `RIG-VMM` markers with the exit status and the
//! times to the guest's first init line and to the VMM's exit. With
//! `--repeat` it times a command instead (the exec benchmark).
//!
//! Usage: `rig-stamp --name NAME --timeout SECS --first-line TEXT [--then SCRIPT] [--guest-mib MIB] -- PROGRAM ARGS...`
//! or `rig-stamp --repeat N --label LABEL -- PROGRAM ARGS...`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentvm_rig::stamp::{repeat, stamp, StampSpec};

/// What to do.
enum Job {
    Stamp(StampSpec),
    Repeat {
        runs: usize,
        label: String,
        program: PathBuf,
        args: Vec<String>,
    },
}

fn parse_job(args: impl Iterator<Item = String>) -> Result<Job, String> {
    let mut args = args.peekable();
    if args.peek().map(String::as_str) != Some("--repeat") {
        return parse(args).map(Job::Stamp);
    }
    let (mut runs, mut label) = (0, String::from("run"));
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--repeat" => {
                let v = value()?;
                runs = v.parse().map_err(|_| format!("bad --repeat {v}"))?;
            }
            "--label" => label = value()?,
            "--" => {
                let program = args.next().ok_or("no program after --")?.into();
                return Ok(Job::Repeat {
                    runs,
                    label,
                    program,
                    args: args.collect(),
                });
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Err("no program (expected `-- PROGRAM ARGS...`)".into())
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<StampSpec, String> {
    let mut spec = StampSpec {
        name: "boot".into(),
        timeout: Duration::from_secs(120),
        first_line: agentvm_rig::scenario::FIRST_LINE.into(),
        program: Default::default(),
        args: Vec::new(),
        then: None,
        guest_mib: None,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--then" => spec.then = Some(value()?.into()),
            "--name" => spec.name = value()?,
            "--timeout" => {
                let v = value()?;
                spec.timeout =
                    Duration::from_secs(v.parse().map_err(|_| format!("bad --timeout {v}"))?);
            }
            "--first-line" => spec.first_line = value()?,
            "--guest-mib" => {
                let v = value()?;
                spec.guest_mib = Some(v.parse().map_err(|_| format!("bad --guest-mib {v}"))?);
            }
            "--" => {
                spec.program = args.next().ok_or("no program after --")?.into();
                spec.args = args.collect();
                return Ok(spec);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Err("no program (expected `-- PROGRAM ARGS...`)".into())
}

fn main() -> ExitCode {
    let spec = match parse_job(std::env::args().skip(1)) {
        Ok(Job::Stamp(s)) => s,
        Ok(Job::Repeat {
            runs,
            label,
            program,
            args,
        }) => {
            let mut out = std::io::stdout().lock();
            return match repeat(&label, runs, &program, &args, &mut out) {
                Ok(ok) if ok == runs => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("rig-stamp: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Err(e) => {
            eprintln!("rig-stamp: {e}");
            return ExitCode::from(64);
        }
    };
    let mut out = std::io::stdout().lock();
    match stamp(&spec, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            println!("RIG-VMM error={e}");
            println!("RIG-VMM end={}", spec.name);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> impl Iterator<Item = String> {
        a.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parses_the_l1_script_form() {
        let s = parse(args(&[
            "--name",
            "pvh-1",
            "--timeout",
            "90",
            "--first-line",
            "RIG-L2 init=start",
            "--",
            "/bin/agentvm",
            "boot",
            "--vcpus",
            "2",
        ]))
        .unwrap();
        assert_eq!(s.name, "pvh-1");
        assert_eq!(s.timeout, Duration::from_secs(90));
        assert_eq!(s.first_line, "RIG-L2 init=start");
        assert_eq!(s.program, std::path::Path::new("/bin/agentvm"));
        assert_eq!(s.args, ["boot", "--vcpus", "2"]);
        assert!(parse(args(&["--timeout", "x", "--", "a"])).is_err());
        assert!(parse(args(&["--name", "a"])).is_err());
        assert!(parse(args(&["--bogus"])).is_err());
        let s = parse(args(&["--then", "/tmp/x.sh", "--", "a"])).unwrap();
        assert_eq!(s.then, Some(PathBuf::from("/tmp/x.sh")));
    }

    #[test]
    fn parses_repeat() {
        let Ok(Job::Repeat {
            runs,
            label,
            program,
            args: a,
        }) = parse_job(args(&[
            "--repeat",
            "200",
            "--label",
            "exec",
            "--",
            "/bin/agentvm",
            "attach",
            "--",
            "true",
        ]))
        else {
            panic!("not a repeat job");
        };
        assert_eq!((runs, label.as_str()), (200, "exec"));
        assert_eq!(program, PathBuf::from("/bin/agentvm"));
        assert_eq!(a, ["attach", "--", "true"]);
        assert!(parse_job(args(&["--repeat", "x", "--", "a"])).is_err());
        assert!(matches!(
            parse_job(args(&["--name", "n", "--", "a"])),
            Ok(Job::Stamp(_))
        ));
    }
}
