//! Docker's `--format` values for list commands (`ps`, `images`): `table`
//! (the default columns), `table TEMPLATE` (a header row, then one row per
//! item, aligned on tabs), `json` (one JSON object per line) or a bare Go
//! template (one line per item, tabs kept as they are); and Docker's
//! human-readable durations.

use std::io::Write;

use serde_json::Value;

use super::template::{Template, TemplateError};

/// A parsed `--format`.
#[derive(Debug)]
pub enum Format {
    /// A header row and aligned columns.
    Table(Template),
    /// `{{json .}}` per item.
    Json,
    /// The template per item.
    Lines(Template),
}

impl Format {
    /// Parses `--format`; `default_table` is the command's `table` columns
    /// (`{{.ID}}\t{{.Image}}...`). Fields a row lacks are errors, as with
    /// Docker's typed list contexts.
    pub fn parse(format: &str, default_table: &str) -> Result<Self, TemplateError> {
        // Docker lets `\t` and `\n` typed in single quotes stand for a tab
        // and a newline.
        let format = format.replace("\\t", "\t").replace("\\n", "\n");
        let format = format.trim_matches(' ');
        if format == "json" {
            return Ok(Self::Json);
        }
        if format == "table" || format.is_empty() {
            return Ok(Self::Table(Template::parse(default_table, true)?));
        }
        match format.strip_prefix("table") {
            Some(rest) if rest.starts_with([' ', '\t']) => {
                Ok(Self::Table(Template::parse(rest.trim_matches(' '), true)?))
            }
            _ => Ok(Self::Lines(Template::parse(format, true)?)),
        }
    }

    /// Renders `rows`: `headers` maps each field to its column title.
    pub fn render(&self, headers: &Value, rows: &[Value]) -> Result<String, TemplateError> {
        let mut out = String::new();
        match self {
            Self::Json => {
                for r in rows {
                    out += &serde_json::to_string(r).unwrap_or_default();
                    out.push('\n');
                }
            }
            Self::Lines(t) => {
                for r in rows {
                    out += &t.render(r)?;
                    out.push('\n');
                }
            }
            Self::Table(t) => {
                let mut lines = vec![t.render_header(headers)?];
                for r in rows {
                    lines.push(t.render(r)?);
                }
                out = align(&lines.join("\n"));
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Renders and prints `rows` on stdout; a closed pipe ends quietly.
    pub fn print(&self, headers: &Value, rows: &[Value]) -> anyhow::Result<()> {
        write_stdout(&self.render(headers, rows)?)
    }
}

/// Prints `inspect` results: a JSON array, or with `--format` each value
/// through the template (`json`: `{{json .}}`), one line each.
pub fn print_inspected(values: &[Value], format: Option<&str>) -> anyhow::Result<()> {
    let text = match format {
        None => serde_json::to_string_pretty(values)? + "\n",
        Some(f) => {
            let f = f.replace("\\t", "\t").replace("\\n", "\n");
            let f = if f.trim() == "json" {
                "{{json .}}"
            } else {
                f.as_str()
            };
            // Inspect data is Docker's raw JSON: a missing field is
            // `<no value>`, not an error.
            let t = Template::parse(f, false)?;
            let mut out = String::new();
            for v in values {
                out += &t.render(v)?;
                out.push('\n');
            }
            out
        }
    };
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Aligns tab-separated cells as Docker's tabwriter does: each column as
/// wide as its widest cell plus 3 spaces, at least 10; the last cell of a
/// line is not padded.
pub fn align(text: &str) -> String {
    let rows: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for r in &rows {
        // A line's last cell is not tab-terminated: it does not size a column.
        for (i, cell) in r.iter().take(r.len() - 1).enumerate() {
            let w = (cell.chars().count() + 3).max(10);
            if widths.len() <= i {
                widths.push(w);
            } else {
                widths[i] = widths[i].max(w);
            }
        }
    }
    let mut lines = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count()));
            }
        }
        lines.push(line.trim_end().to_string());
    }
    lines.join("\n")
}

/// Docker's human duration: `Less than a second`, `5 seconds`, `About a
/// minute`, `3 minutes`, `About an hour`, `5 hours`, `3 days`, `2 weeks`,
/// `4 months`, `2 years`.
pub fn human_duration(secs: u64) -> String {
    let minutes = secs / 60;
    // Hours round to the nearest, as Docker's do.
    let hours = (secs + 1800) / 3600;
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// Seconds from the RFC 3339 time `then` to now (0 when unknown).
pub fn secs_since(then: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    images::time::parse_unix(then).map_or(0, |t| now.saturating_sub(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_as_docker_s() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(180), "3 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
        assert_eq!(human_duration(15 * 86_400), "2 weeks");
        assert_eq!(human_duration(3 * 365 * 86_400), "3 years");
    }

    #[test]
    fn formats_table_json_and_lines() {
        let headers = json!({"ID": "CONTAINER ID", "Names": "NAMES"});
        let rows = vec![
            json!({"ID": "abc", "Names": "web"}),
            json!({"ID": "d", "Names": "x"}),
        ];
        let t = Format::parse("table {{.ID}}\\t{{.Names}}", "").unwrap();
        assert_eq!(
            t.render(&headers, &rows).unwrap(),
            "CONTAINER ID   NAMES\nabc            web\nd              x\n"
        );
        let t = Format::parse("{{.Names}}\\t{{.ID}}", "").unwrap();
        assert_eq!(t.render(&headers, &rows).unwrap(), "web\tabc\nx\td\n");
        let t = Format::parse("json", "").unwrap();
        assert_eq!(
            t.render(&headers, &rows[..1]).unwrap(),
            "{\"ID\":\"abc\",\"Names\":\"web\"}\n"
        );
        let t = Format::parse("table", "{{.Names}}\t{{.ID}}").unwrap();
        assert_eq!(
            t.render(&headers, &rows[..1]).unwrap(),
            "NAMES     CONTAINER ID\nweb       abc\n"
        );
        // A header through a function stays the header.
        let t = Format::parse("table {{json .Names}}", "").unwrap();
        assert_eq!(t.render(&headers, &rows[..1]).unwrap(), "NAMES\n\"web\"\n");
        let t = Format::parse("table {{printf \"%-6s|\" .ID}}", "").unwrap();
        assert_eq!(
            t.render(&headers, &rows[..1]).unwrap(),
            "CONTAINER ID|\nabc   |\n"
        );
        let bad = Format::parse("{{.Nmes}}", "").unwrap();
        assert!(bad.render(&headers, &rows).is_err());
    }
}
