//! Tables as kubectl prints them: upper-case headers, columns three spaces apart and as wide as
//! their widest cell, the last column unpadded. Built from the server's `Table`s
//! (`meta.k8s.io/v1`), whose `priority > 0` columns are the `-o wide` ones.

use std::io::{self, Write};

use serde_json::Value;

/// Spaces between two columns.
const GAP: usize = 3;

/// A table ready to print.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Which of the server's columns to keep, and what to add.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Keep the `priority > 0` columns (`-o wide`).
    pub wide: bool,
    /// Start each row with its namespace (`-A`).
    pub namespace_column: bool,
}

impl Table {
    /// The rows of a server-side `Table` object; with `name_prefix` (`deployment.apps`, when
    /// several types are printed together) names are printed as `prefix/name`.
    pub fn from_server(table: &Value, options: &Options, name_prefix: Option<&str>) -> Self {
        let columns = table["columnDefinitions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let keep: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| options.wide || c["priority"].as_i64().unwrap_or(0) == 0)
            .map(|(i, _)| i)
            .collect();
        let name_column = columns
            .iter()
            .position(|c| c["format"] == "name" || c["name"] == "Name");
        let mut headers: Vec<String> = keep
            .iter()
            .map(|&i| {
                columns[i]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_uppercase()
            })
            .collect();
        if options.namespace_column {
            headers.insert(0, "NAMESPACE".to_owned());
        }
        let rows = table["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                let cells = row["cells"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let mut out: Vec<String> = keep
                    .iter()
                    .map(|&i| {
                        let text = cell_text(cells.get(i).unwrap_or(&Value::Null));
                        match name_prefix {
                            Some(prefix) if Some(i) == name_column => format!("{prefix}/{text}"),
                            _ => text,
                        }
                    })
                    .collect();
                if options.namespace_column {
                    let ns = row["object"]["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default();
                    out.insert(0, ns.to_owned());
                }
                out
            })
            .collect();
        Self { headers, rows }
    }

    /// Column widths: the widest cell (or header) of each column.
    pub fn widths(&self, with_headers: bool) -> Vec<usize> {
        let mut widths = vec![0; self.headers.len()];
        let header_rows = with_headers.then_some(&self.headers);
        for row in header_rows.into_iter().chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }

    /// Prints the table, with its headers unless `no_headers`.
    pub fn write(&self, out: &mut impl Write, no_headers: bool) -> io::Result<Vec<usize>> {
        let widths = self.widths(!no_headers);
        if !no_headers {
            write_row(out, &self.headers, &widths)?;
        }
        for row in &self.rows {
            write_row(out, row, &widths)?;
        }
        Ok(widths)
    }
}

/// Prints one row, each cell but the last padded to `widths` (at least).
pub fn write_row(out: &mut impl Write, cells: &[String], widths: &[usize]) -> io::Result<()> {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < cells.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()) + GAP;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    writeln!(out, "{line}")
}

/// A cell as text: strings as they are, `<none>` for nothing.
fn cell_text(cell: &Value) -> String {
    match cell {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployments() -> Value {
        json!({
            "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "7"},
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "priority": 0},
                {"name": "Ready", "type": "string", "format": "", "priority": 0},
                {"name": "Up-to-date", "type": "integer", "format": "", "priority": 0},
                {"name": "Available", "type": "integer", "format": "", "priority": 0},
                {"name": "Age", "type": "string", "format": "", "priority": 0},
                {"name": "Containers", "type": "string", "format": "", "priority": 1},
            ],
            "rows": [
                {"cells": ["web", "2/2", 2, 2, "5m", "nginx"],
                 "object": {"metadata": {"name": "web", "namespace": "default"}}},
                {"cells": ["api-server", "0/1", 0, 0, "10s", null],
                 "object": {"metadata": {"name": "api-server", "namespace": "team-a"}}},
            ],
        })
    }

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out, false).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn columns_are_aligned_three_spaces_apart() {
        let table = Table::from_server(&deployments(), &Options::default(), None);
        assert_eq!(
            render(&table),
            "NAME         READY   UP-TO-DATE   AVAILABLE   AGE\n\
             web          2/2     2            2           5m\n\
             api-server   0/1     0            0           10s\n"
        );
    }

    #[test]
    fn wide_adds_priority_columns_and_all_namespaces_a_namespace_column() {
        let options = Options {
            wide: true,
            namespace_column: true,
        };
        let table = Table::from_server(&deployments(), &options, None);
        assert_eq!(
            table.headers,
            [
                "NAMESPACE",
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "CONTAINERS"
            ]
        );
        assert_eq!(table.rows[1][0], "team-a");
        assert_eq!(table.rows[1][6], "<none>");
        let text = render(&table);
        assert!(text.starts_with("NAMESPACE   NAME   "), "{text}");
    }

    #[test]
    fn names_can_carry_their_type() {
        let table =
            Table::from_server(&deployments(), &Options::default(), Some("deployment.apps"));
        assert_eq!(table.rows[0][0], "deployment.apps/web");
    }

    #[test]
    fn rows_wider_than_the_widths_still_get_a_gap() {
        let mut out = Vec::new();
        write_row(&mut out, &["a-long-name".into(), "x".into()], &[4, 1]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "a-long-name   x\n");
    }
}
