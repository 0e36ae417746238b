//! The rendered book has no broken internal links.
//!
//! `book_has_no_broken_internal_links` renders the book with `mdbook build` into a fresh
//! directory and checks every `href` and `src` of every HTML page that points inside the book:
//! the file must exist, and a `#fragment` must be the `id` of an element of the page it points
//! to. External links (`https:`, `mailto:`, ...) are not followed. It needs `mdbook` (the version
//! `scripts/test.sh` installs) on `PATH`, or its path in `MDBOOK`, and fails when it is missing.
//!
//! `the_checker_reports_broken_links` shows on a small hand-written site that the checker
//! reports a missing page and a missing anchor, and accepts what is there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

#[test]
fn book_has_no_broken_internal_links() {
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("book");
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("book-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mdbook = std::env::var("MDBOOK").unwrap_or_else(|_| "mdbook".to_owned());
    let built = Command::new(&mdbook)
        .arg("build")
        .arg(&book)
        .arg("--dest-dir")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `{mdbook} build` failed: {e}; install it with \
                 `cargo install --locked mdbook@0.5.4 --no-default-features --features search` \
                 (scripts/test.sh does) or set MDBOOK to its path"
            )
        });
    assert!(
        built.status.success(),
        "`{mdbook} build {}` failed:\n{}",
        book.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let pages = html_pages(&out);
    assert!(
        pages.len() > 10,
        "only {} pages rendered in {}",
        pages.len(),
        out.display()
    );
    let broken = broken_links(&out);
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        broken.is_empty(),
        "{} broken links in the rendered book:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_checker_reports_broken_links() {
    let site = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("book-links-self-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&site);
    std::fs::create_dir_all(site.join("sub")).expect("create the test site");
    std::fs::write(
        site.join("index.html"),
        r##"<html><head><link href="style.css" rel="stylesheet"></head><body>
        <h1 id="top">Top</h1>
        <a href="#top">self</a> <a href="sub/page.html#part">good</a> <a href="https://example.com/x">external</a>
        <a href="missing.html">missing page</a> <a href="sub/page.html#nowhere">missing anchor</a>
        <img src="sub/../style.css"></body></html>"##,
    )
    .expect("write index.html");
    std::fs::write(
        site.join("sub/page.html"),
        r#"<h2 id="part">Part</h2><a href="../index.html#top">back</a> <a href="../index.html#gone">gone</a>"#,
    )
    .expect("write sub/page.html");
    std::fs::write(site.join("style.css"), "").expect("write style.css");

    let broken = broken_links(&site);
    let _ = std::fs::remove_dir_all(&site);
    assert_eq!(
        broken,
        [
            "index.html: `missing.html`: no such file",
            "index.html: `sub/page.html#nowhere`: sub/page.html has no id `nowhere`",
            "sub/page.html: `../index.html#gone`: index.html has no id `gone`",
        ]
    );
}

/// Every `.html` file under `root`, as paths relative to it, sorted.
fn html_pages(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, pages: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading directory {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("reading directory {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                walk(root, &path, pages);
            } else if path.extension().is_some_and(|ext| ext == "html") {
                let relative = path.strip_prefix(root).expect("under the root");
                pages.push(relative.to_path_buf());
            }
        }
    }
    let mut pages = Vec::new();
    walk(root, root, &mut pages);
    pages.sort();
    pages
}

/// One line per broken internal link under `root`: `page: `link`: why`.
fn broken_links(root: &Path) -> Vec<String> {
    let pages = html_pages(root);
    let mut ids: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut texts = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(root.join(page))
            .unwrap_or_else(|e| panic!("reading {}: {e}", page.display()));
        ids.insert(
            page.clone(),
            attribute_values(&text, "id").into_iter().collect(),
        );
        texts.push((page, text));
    }
    let mut broken = Vec::new();
    for (page, text) in texts {
        // A `<base href>` moves where relative links start (mdBook's 404 page has one).
        let base = text
            .split_once("<base href=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(base, _)| base);
        let base_dir = match base {
            Some(base) if base.starts_with('/') => resolve(Path::new(""), &base[1..]),
            Some(base) => resolve(page.parent().unwrap_or(Path::new("")), base),
            None => page.parent().map(Path::to_path_buf),
        };
        for attribute in ["href", "src"] {
            for link in attribute_values(&text, attribute) {
                if let Some(why) = check(&link, page, base_dir.as_deref(), root, &ids) {
                    broken.push(format!("{}: `{link}`: {why}", page.display()));
                }
            }
        }
    }
    broken
}

/// Why `link` on `page` is broken, or `None` when it is fine or points outside the book.
fn check(
    link: &str,
    page: &Path,
    base_dir: Option<&Path>,
    root: &Path,
    ids: &BTreeMap<PathBuf, BTreeSet<String>>,
) -> Option<String> {
    let link = link.replace("&amp;", "&");
    let lower = link.to_ascii_lowercase();
    let external = [
        "http:",
        "https:",
        "mailto:",
        "data:",
        "javascript:",
        "tel:",
        "//",
    ];
    if external.iter().any(|scheme| lower.starts_with(scheme)) {
        return None;
    }
    let (path, fragment) = match link.split_once('#') {
        Some((path, fragment)) => (path, Some(percent_decode(fragment))),
        None => (link.as_str(), None),
    };
    let path = path.split('?').next().unwrap_or_default();
    let target = if path.is_empty() {
        page.to_path_buf()
    } else if let Some(absolute) = path.strip_prefix('/') {
        match resolve(Path::new(""), &percent_decode(absolute)) {
            Some(target) => target,
            None => return Some("leaves the book".to_owned()),
        }
    } else {
        match resolve(base_dir.unwrap_or(Path::new("")), &percent_decode(path)) {
            Some(target) => target,
            None => return Some("leaves the book".to_owned()),
        }
    };
    let on_disk = root.join(&target);
    let target = if on_disk.is_dir() {
        target.join("index.html")
    } else {
        target
    };
    if !root.join(&target).is_file() {
        return Some("no such file".to_owned());
    }
    match fragment {
        Some(fragment)
            if !fragment.is_empty() && target.extension().is_some_and(|e| e == "html") =>
        {
            let known = ids.get(&target).is_some_and(|ids| ids.contains(&fragment));
            (!known).then(|| format!("{} has no id `{fragment}`", target.display()))
        }
        _ => None,
    }
}

/// `relative` joined to `dir`, with `.` and `..` folded; `None` when it climbs above the root.
fn resolve(dir: &Path, relative: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.iter().collect())
}

/// The values of every `name="..."` attribute in `html` (also `name='...'`).
fn attribute_values(html: &str, name: &str) -> Vec<String> {
    let mut values = Vec::new();
    let bytes = html.as_bytes();
    let needle = format!("{name}=");
    let mut from = 0;
    while let Some(found) = html[from..].find(&needle) {
        let start = from + found;
        from = start + needle.len();
        // An attribute name starts after whitespace: `data-id=` or `hid=` are other attributes.
        if start == 0 || !bytes[start - 1].is_ascii_whitespace() {
            continue;
        }
        let Some(&quote) = bytes.get(from) else { break };
        if quote != b'"' && quote != b'\'' {
            continue;
        }
        let value_start = from + 1;
        if let Some(len) = html[value_start..].find(quote as char) {
            values.push(html[value_start..value_start + len].to_owned());
            from = value_start + len + 1;
        }
    }
    values
}

/// `%XX` escapes decoded (links to anchors with non-ASCII ids are percent-encoded).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
