//! What the commands print: tables, trees, JSON, sizes and times.
//!
//! # JSON (`list-images --json`)
//!
//! An array of objects, one per image, sorted by name. Field names are stable:
//!
//! | field          | type            | meaning                                              |
//! |----------------|-----------------|------------------------------------------------------|
//! | `name`         | string          | the image's name                                     |
//! | `parent`       | string or null  | the image it stacks on                               |
//! | `state`        | string          | `"open"` (editable) or `"sealed"`                    |
//! | `size`         | integer         | bytes of file content in the image's own layer       |
//! | `files`        | integer         | non-directory entries in the image's own layer       |
//! | `created`      | string          | creation time, local ISO 8601 with offset (`2025-01-02T03:04:05+01:00`) |
//! | `created_unix` | integer         | creation time, seconds since the epoch               |
//!
//! With `--tree`, the array holds the root images (no parent), each with a
//! `children` array of the same objects, recursively.

use std::collections::BTreeMap;

use serde::Serialize;
use stacko::{ImageInfo, ImageState, Timestamp};

/// Sizes in binary units: `0 B`, `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Local time: `(YYYY-MM-DD HH:MM:SS, YYYY-MM-DDTHH:MM:SS±HH:MM)`.
pub fn local_time(t: Timestamp) -> (String, String) {
    let secs = t.sec as libc::time_t;
    // SAFETY: tm is plain data; localtime_r writes it and is thread-safe.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        let s = format!("@{}", t.sec);
        return (s.clone(), s);
    }
    let date = format!(
        "{:04}-{:02}-{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday
    );
    let time = format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec);
    let off = tm.tm_gmtoff;
    let sign = if off < 0 { '-' } else { '+' };
    let off = off.abs();
    (
        format!("{date} {time}"),
        format!("{date}T{time}{sign}{:02}:{:02}", off / 3600, off / 60 % 60),
    )
}

fn state_name(s: ImageState) -> &'static str {
    match s {
        ImageState::Open => "open",
        ImageState::Sealed => "sealed",
    }
}

/// Lays `rows` out in columns under `headers`, two spaces apart; the
/// columns listed in `right` are right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            let last = i + 1 == r.len();
            if i > 0 {
                line.push_str("  ");
            }
            if right.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(c);
            } else {
                line.push_str(c);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `list-images` table.
pub fn images_table(images: &[ImageInfo]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.parent.clone().unwrap_or_else(|| "-".into()),
                state_name(i.state).into(),
                human_size(i.size),
                i.files.to_string(),
                local_time(i.created).0,
            ]
        })
        .collect();
    table(
        &["NAME", "PARENT", "STATE", "SIZE", "FILES", "CREATED"],
        &rows,
        &[3, 4],
    )
}

/// One image in JSON (see the module docs).
#[derive(Serialize)]
pub struct ImageJson {
    name: String,
    parent: Option<String>,
    state: &'static str,
    size: u64,
    files: u64,
    created: String,
    created_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    children: Option<Vec<ImageJson>>,
}

fn image_json(i: &ImageInfo, children: Option<Vec<ImageJson>>) -> ImageJson {
    ImageJson {
        name: i.name.clone(),
        parent: i.parent.clone(),
        state: state_name(i.state),
        size: i.size,
        files: i.files,
        created: local_time(i.created).1,
        created_unix: i.created.sec,
        children,
    }
}

/// The flat JSON list.
pub fn images_json(images: &[ImageInfo]) -> Vec<ImageJson> {
    images.iter().map(|i| image_json(i, None)).collect()
}

/// Children by parent name; roots are images whose parent is absent from the list.
fn forest(images: &[ImageInfo]) -> (Vec<&ImageInfo>, BTreeMap<&str, Vec<&ImageInfo>>) {
    let names: std::collections::HashSet<&str> = images.iter().map(|i| i.name.as_str()).collect();
    let mut roots = Vec::new();
    let mut kids: BTreeMap<&str, Vec<&ImageInfo>> = BTreeMap::new();
    for i in images {
        match i.parent.as_deref() {
            Some(p) if names.contains(p) && p != i.name => kids.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    roots.sort_by(|a, b| a.name.cmp(&b.name));
    for v in kids.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    (roots, kids)
}

/// The nested JSON forest.
pub fn images_tree_json(images: &[ImageInfo]) -> Vec<ImageJson> {
    let (roots, kids) = forest(images);
    fn build(i: &ImageInfo, kids: &BTreeMap<&str, Vec<&ImageInfo>>, depth: usize) -> ImageJson {
        let children = kids
            .get(i.name.as_str())
            .filter(|_| depth < 10_000)
            .map(|v| v.iter().map(|c| build(c, kids, depth + 1)).collect())
            .unwrap_or_default();
        image_json(i, Some(children))
    }
    roots.iter().map(|r| build(r, &kids, 0)).collect()
}

/// The `--tree` drawing:
///
/// ```text
/// base  (sealed, 1.2 MiB, 300 files)
/// ├── apps-1.0  (sealed, 10.0 KiB, 3 files)
/// │   └── apps-1.1  (open, 0 B, 0 files)
/// └── tools  (sealed, 2.0 KiB, 1 files)
/// ```
pub fn images_tree(images: &[ImageInfo]) -> String {
    let (roots, kids) = forest(images);
    let mut out = String::new();
    fn line(out: &mut String, prefix: &str, branch: &str, i: &ImageInfo) {
        out.push_str(&format!(
            "{prefix}{branch}{}  ({}, {}, {} files)\n",
            i.name,
            state_name(i.state),
            human_size(i.size),
            i.files
        ));
    }
    fn walk(
        out: &mut String,
        i: &ImageInfo,
        prefix: &str,
        kids: &BTreeMap<&str, Vec<&ImageInfo>>,
        depth: usize,
    ) {
        let Some(children) = kids.get(i.name.as_str()) else {
            return;
        };
        if depth > 10_000 {
            return;
        }
        for (n, c) in children.iter().enumerate() {
            let last = n + 1 == children.len();
            line(out, prefix, if last { "└── " } else { "├── " }, c);
            let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
            walk(out, c, &deeper, kids, depth + 1);
        }
    }
    for r in roots {
        line(&mut out, "", "", r);
        walk(&mut out, r, "", &kids, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, parent: Option<&str>) -> ImageInfo {
        ImageInfo {
            name: name.into(),
            parent: parent.map(Into::into),
            state: ImageState::Sealed,
            created: Timestamp { sec: 0, nsec: 0 },
            size: 2048,
            files: 2,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn table_aligns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
            &[1],
        );
        assert_eq!(t, "A    BB\nxyz   1\nq    22\n");
    }

    #[test]
    fn tree_draws_the_forest() {
        let imgs = vec![
            img("base", None),
            img("a", Some("base")),
            img("b", Some("base")),
            img("a2", Some("a")),
            img("solo", None),
        ];
        let t = images_tree(&imgs);
        let names: Vec<&str> = t.lines().map(|l| l.split("  (").next().unwrap()).collect();
        assert_eq!(names, ["base", "├── a", "│   └── a2", "└── b", "solo"]);
        let j = serde_json::to_value(images_tree_json(&imgs)).unwrap();
        assert_eq!(j[0]["name"], "base");
        assert_eq!(j[0]["children"][0]["children"][0]["name"], "a2");
        assert_eq!(j[1]["name"], "solo");
    }

    #[test]
    fn local_time_has_an_offset() {
        let (table, iso) = local_time(Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        });
        assert_eq!(table.len(), 19);
        assert_eq!(iso.len(), 25, "{iso}");
        assert_eq!(&table[..10], &iso[..10]);
    }
}
