//! Query answers as CSV and as aligned text tables (the CLI's default).

use serde_json::Value;

use super::QueryResult;

/// The answer as CSV (RFC 4180 quoting).
pub fn to_csv(r: &QueryResult) -> String {
    fn cell(out: &mut String, s: &str) {
        if s.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&s.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(s);
        }
    }
    // A spreadsheet runs a text cell starting with = + - @ | % (full-width forms too, and after
    // leading blanks) as a formula: such text (a user id, a tag a client sent) gets a leading
    // `'`. Numbers are written as they are.
    fn text(out: &mut String, s: &str) {
        const RUNS: [char; 10] = ['=', '+', '-', '@', '|', '%', '＝', '＋', '－', '＠'];
        let blank_led = s.starts_with(|c: char| c.is_whitespace() || c.is_control());
        if s.trim_start_matches(|c: char| c.is_whitespace() || c.is_control())
            .starts_with(RUNS)
            || (blank_led && s.starts_with(['\t', '\r']))
        {
            cell(out, &format!("'{s}"));
        } else {
            cell(out, s);
        }
    }
    let mut out = String::new();
    for (i, c) in r.columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        text(&mut out, c);
    }
    out.push('\n');
    for row in &r.rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match v {
                Value::Null => {}
                Value::String(s) => text(&mut out, s),
                other => cell(&mut out, &other.to_string()),
            }
        }
        out.push('\n');
    }
    out
}

/// The answer as an aligned text table (the CLI's default).
pub fn to_table(r: &QueryResult) -> String {
    let text = |v: &Value| match v {
        Value::Null => "NULL".to_string(),
        Value::String(s) => s.replace(['\n', '\r'], " "),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| row.iter().map(text).collect())
        .collect();
    let mut widths: Vec<usize> = r.columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |vals: &[String]| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&r.columns);
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str(&format!(
        "({} row{}{})\n",
        r.rows.len(),
        if r.rows.len() == 1 { "" } else { "s" },
        if r.truncated { ", truncated" } else { "" }
    ));
    out
}

// ---------------------------------------------------------------- export
