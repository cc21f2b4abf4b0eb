//! How the sections lay out their rows: columns as wide as their widest cell, two spaces
//! apart, under a heading row.

/// A table's rows, its heading first.
pub(super) type Rows = Vec<Vec<String>>;

/// A heading row (or any row of fixed cells).
pub(super) fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.map(str::to_string).to_vec()
}

/// Names as one cell: `one, two`.
pub(super) fn names<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    names.into_iter().cloned().collect::<Vec<_>>().join(", ")
}

/// A table after a blank line, if it has more than its heading.
pub(super) fn section(out: &mut String, rows: Rows) {
    if rows.len() > 1 {
        out.push('\n');
        table(out, rows);
    }
}

/// Rows in columns as wide as their widest cell, two spaces apart.
pub(super) fn table(out: &mut String, rows: Rows) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
}
