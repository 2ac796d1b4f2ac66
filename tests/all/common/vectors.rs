//! Reading the PyTorch vector files in `tests/data/` (written by `convert_pytorch_vectors.py`) and
//! collecting mismatches against them: what the three PyTorch tests share.

use std::collections::BTreeMap;

/// How many mismatch lines a failure prints (all are counted).
pub const MAX_REPORTED: usize = 60;

/// The lines that carry data: trailing space trimmed, blank lines and `#` comments skipped.
pub fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

pub fn parse_hex_f32(case: &str, role: &str, s: &str) -> f32 {
    let bits = u32::from_str_radix(s, 16)
        .unwrap_or_else(|e| panic!("{case}: bad hex {s:?} in {role}: {e}"));
    f32::from_bits(bits)
}

/// Splits a data line `<role> <values...>` after checking the role.
pub fn values<'a>(case: &str, role: &str, line: Option<&'a str>) -> Vec<&'a str> {
    let line = line.unwrap_or_else(|| panic!("{case}: file ends before `{role}`"));
    let mut fields = line.split_ascii_whitespace();
    let found = fields.next().unwrap_or("");
    assert_eq!(
        found, role,
        "{case}: expected a `{role}` line, found {line:.60?}"
    );
    fields.collect()
}

/// A data line of hex f32 bit patterns.
pub fn hex_values(case: &str, role: &str, line: Option<&str>) -> Vec<f32> {
    values(case, role, line)
        .into_iter()
        .map(|s| parse_hex_f32(case, role, s))
        .collect()
}

/// The value of a `key=value` header field.
pub fn key_value<'a>(case: &str, field: Option<&'a str>, key: &str) -> &'a str {
    let field = field.unwrap_or_else(|| panic!("{case}: header lacks `{key}=`"));
    field
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix('='))
        .unwrap_or_else(|| panic!("{case}: expected `{key}=..`, found {field:?}"))
}

/// Every mismatch counted, the first `MAX_REPORTED` kept for the report, and a count per (check,
/// case) for the summary. Each test adds its own comparisons (`bits`, ...) in a trait of its own.
#[derive(Default)]
pub struct Mismatches {
    lines: Vec<String>,
    count: usize,
    per_case: BTreeMap<(String, String), usize>,
}

impl Mismatches {
    pub fn push(&mut self, what: &str, case: &str, line: String) {
        self.count += 1;
        *self
            .per_case
            .entry((what.to_string(), case.to_string()))
            .or_default() += 1;
        if self.lines.len() < MAX_REPORTED {
            self.lines.push(line);
        }
    }

    pub fn assert_none(&self, title: &str) {
        if self.count > 0 {
            let summary: Vec<String> = self
                .per_case
                .iter()
                .map(|((what, case), n)| format!("  {n:5} {what}: {case}"))
                .collect();
            panic!(
                "{title}: {} mismatches in {} (check, case) pairs:\n{}\nfirst {} mismatches:\n{}",
                self.count,
                summary.len(),
                summary.join("\n"),
                self.lines.len(),
                self.lines.join("\n")
            );
        }
    }
}
