//! The source tree keeps the shape docs/architecture.md describes: every module is listed
//! there, dependencies between the library's top-level modules point one way only, and no file
//! grows past ~600 lines without saying why at its top.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

/// The library's top-level modules, lowest layer first: a module may use only modules before
/// it in this list (docs/architecture.md, "Dependencies point one way only").
const LAYERS: [&str; 8] = [
    "sys", "policy", "compile", "cgroups", "kernel", "events", "docker", "daemon",
];

/// Longest file without a reason at its top.
const MAX_LINES: usize = 650;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, relative to it.
fn sources() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src()).unwrap().display().to_string();
                found.insert(relative, fs::read_to_string(&path).unwrap());
            }
        }
    }
    found
}

/// The top-level module a source file belongs to (`kernel/pins.rs` → `kernel`).
fn top_module(relative: &str) -> &str {
    relative.split('/').next().unwrap().trim_end_matches(".rs")
}

/// The paths under `src/` that the tree in docs/architecture.md lists: files, and directories
/// listed without their files (`gate/`), which stand for everything below them.
fn listed_in_tree(doc: &str) -> (Vec<String>, Vec<String>) {
    let tree = &doc[doc.find("## The tree").expect("a tree section")..];
    let mut lines = tree.lines().skip_while(|line| line.trim() != "src/");
    let src_indent = lines
        .next()
        .map_or(0, |line| line.len() - line.trim_start().len());
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    // (indent, path of the directory) of the directories the current line is in.
    let mut open: Vec<(usize, String)> = Vec::new();
    for line in lines.take_while(|line| !line.starts_with("```")) {
        let indent = line.len() - line.trim_start().len();
        let Some(token) = line.split_whitespace().next() else {
            continue;
        };
        // Wrapped descriptions start with words, not with a file or directory name.
        if indent <= src_indent || !(token.ends_with(".rs") || token.ends_with('/')) {
            continue;
        }
        while open.last().is_some_and(|(at, _)| *at >= indent) {
            open.pop();
        }
        let path = match open.last() {
            Some((_, dir)) => format!("{dir}{token}"),
            None => token.to_owned(),
        };
        if token.ends_with('/') {
            dirs.push(path.clone());
            open.push((indent, path));
        } else {
            files.push(path);
        }
    }
    // Directories whose files are listed one by one cover nothing beyond them.
    dirs.retain(|dir| !files.iter().any(|file| file.starts_with(dir.as_str())));
    (files, dirs)
}

#[test]
fn architecture_lists_every_module() {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"))
            .expect("docs/architecture.md exists");
    let (files, dirs) = listed_in_tree(&doc);
    let sources = sources();
    let missing: Vec<&String> = sources
        .keys()
        .filter(|path| {
            !files.contains(path) && !dirs.iter().any(|dir| path.starts_with(dir.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not list {missing:?}; add one line per module to its tree"
    );
    let stale: Vec<&String> = files
        .iter()
        .filter(|file| !sources.contains_key(*file))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md lists {stale:?}, which do not exist"
    );
}

#[test]
fn dependencies_point_down_the_layers() {
    let mut upward = Vec::new();
    for (relative, text) in sources() {
        let own = top_module(&relative);
        let Some(own_layer) = LAYERS.iter().position(|l| *l == own) else {
            continue; // lib.rs, main.rs and cli/ sit on top of everything.
        };
        for (index, layer) in LAYERS.iter().enumerate() {
            let used = text.contains(&format!("crate::{layer}::"))
                || text.contains(&format!("crate::{layer},"))
                || text.contains(&format!("crate::{layer}}}"))
                || text.contains(&format!("crate::{{{layer}"))
                || text.contains(&format!("\n    {layer}::"));
            if used && index > own_layer {
                upward.push(format!("{relative} uses crate::{layer}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules use modules above them (see LAYERS and docs/architecture.md): {upward:#?}"
    );
}

#[test]
fn files_stay_short_or_say_why() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| text.lines().count() > MAX_LINES)
        .filter(|(_, text)| {
            !text
                .lines()
                .take(30)
                .any(|line| line.starts_with("//!") && line.contains("Longer than"))
        })
        .map(|(relative, text)| format!("{relative}: {} lines", text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines must say why at their top (a `//! Longer than …` line): \
         {long:?}"
    );
}
