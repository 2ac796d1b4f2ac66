//! The examples' command-line handling, shared by `#[path]` (not an example itself: this
//! directory has no `main.rs`). `-h` / `--help` anywhere prints the usage and exits 0 before
//! anything runs; an unknown option, a missing or malformed value prints the error on stderr and
//! exits 2.

// Each example uses the part it needs.
#![allow(dead_code)]

use std::process::exit;

/// The environment variables every GPU example reads (through `GpuContext::new`), for the usage
/// texts.
pub const ENVIRONMENT: &str = "\
Environment:
  FAKEQUANT_BACKEND  vulkan, gl, metal or dx12, comma-separated for several (default: all);
                     or cpu for the CPU backend (the examples that run on it)
  FAKEQUANT_ADAPTER  case-insensitive substring of the adapter name (default: the best adapter:
                     discrete, integrated, virtual, other, then CPU)";

/// The program's arguments, read one by one.
pub struct Args(std::vec::IntoIter<String>);

impl Args {
    /// The process's arguments. Prints `usage` and exits 0 if any of them is `-h` or `--help`.
    pub fn new(usage: &str) -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "-h" || a == "--help") {
            println!("{usage}");
            exit(0);
        }
        Self(args.into_iter())
    }

    /// The value following `option`; a usage error if there is none.
    pub fn value(&mut self, option: &str) -> String {
        match self.0.next() {
            Some(v) if !v.starts_with("--") => v,
            _ => self.error(&format!("{option} needs a value")),
        }
    }

    /// The value following `option`, parsed; a usage error if it is missing or does not parse.
    pub fn parse<T: std::str::FromStr>(&mut self, option: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        let value = self.value(option);
        value
            .parse()
            .unwrap_or_else(|e| self.error(&format!("{option} {value:?}: {e}")))
    }

    /// Prints `message` on stderr and exits 2.
    pub fn error(&self, message: &str) -> ! {
        eprintln!("error: {message}\n(--help lists the options)");
        exit(2);
    }

    /// A usage error for an argument that no option matched.
    pub fn unknown(&self, arg: &str) -> ! {
        self.error(&format!("unknown argument {arg:?}"))
    }
}

impl Iterator for Args {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.0.next()
    }
}
