//! The man pages the packages ship: `blockwatch(8)` and `blockwatch-launch(1)`
//! rendered from the clap definitions, `blockwatch.toml(5)` from the config
//! key table the parser is checked against, so none can drift from the code.
//!
//! Subcommands are rendered into their command's page (a section each, with
//! its synopsis and options) rather than one page per subcommand: there are
//! three (two for the launcher), they share flags, and `man blockwatch`
//! then shows an operator everything in one place.

use std::io;

use blockwatch_core::config_keys::{ConfigKey, CONFIG_KEYS};
use clap::CommandFactory;
use clap_mangen::Man;

/// One rendered page.
#[derive(Debug)]
pub struct Page {
    /// e.g. `blockwatch.8`
    pub file_name: String,
    /// roff source.
    pub text: String,
}

/// Every page the packages ship.
pub fn pages() -> io::Result<Vec<Page>> {
    Ok(vec![
        command_page(blockwatch::cli::Cli::command(), "8")?,
        command_page(blockwatch_launch::cli::Cli::command(), "1")?,
        config_page(),
    ])
}

/// The command's own page, then one section per subcommand.
fn command_page(cmd: clap::Command, section: &str) -> io::Result<Page> {
    let mut cmd = cmd;
    cmd.build();
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    Man::new(cmd.clone()).section(section).render(&mut out)?;
    for sub in documented_subcommands(&cmd) {
        let full = format!("{name} {}", sub.get_name());
        let sub = sub.clone().bin_name(full.clone());
        out.extend_from_slice(format!(".SH \"{}\"\n", full.to_uppercase()).as_bytes());
        let man = Man::new(sub).section(section);
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        // Inside the subcommand's section, its own headings are subsections.
        let part = String::from_utf8_lossy(&part).replace("\n.SH ", "\n.SS ");
        let part = part
            .strip_prefix(".SH ")
            .map_or(part.clone(), |rest| format!(".SS {rest}"));
        out.extend_from_slice(part.as_bytes());
    }
    Ok(Page {
        file_name: format!("{name}.{section}"),
        text: String::from_utf8_lossy(&out).into_owned(),
    })
}

/// The subcommands a page describes: not hidden ones, nor clap's `help`.
fn documented_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// Text for a roff line: backslashes, and a leading `.` or `'` that would
/// read as a request, are escaped; a Markdown `code` span is set in bold.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    let text: String = text
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("\\fB{part}\\fR")
            } else {
                part.to_owned()
            }
        })
        .collect();
    if text.starts_with(['.', '\'']) {
        format!("\\&{text}")
    } else {
        text
    }
}

/// `blockwatch.toml(5)`, from [`CONFIG_KEYS`].
fn config_page() -> Page {
    let mut text = String::from(
        ".TH BLOCKWATCH.TOML 5 \"\" \"blockwatch\" \"File Formats\"\n\
         .SH NAME\n\
         blockwatch.toml \\- configuration of the blockwatch agent\n\
         .SH SYNOPSIS\n\
         /etc/blockwatch/blockwatch.toml\n\
         .SH DESCRIPTION\n\
         A TOML file read by \\fBblockwatch join\\fR and \\fBblockwatch run\\fR. Every key is \
         optional; an unknown key is an error, so a typo never falls back to a default. \
         Precedence: this file, then the instance tags (blockwatch:*), then AWS discovery, \
         then the defaults. \\fBblockwatch join\\fR logs the effective value of each key and \
         where it came from. The file must not be writable by anyone but root (or \
         blockwatch's own user), nor may any directory above it: \\fBpoweroff_command\\fR \
         runs as root.\n\
         .SH KEYS\n",
    );
    for key in CONFIG_KEYS {
        text.push_str(&key_entry(key));
    }
    text.push_str(
        ".SH FILES\n\
         .TP\n\
         /etc/blockwatch/blockwatch.toml\n\
         The shipped file lists every key, commented out, at its default.\n\
         .SH \"SEE ALSO\"\n\
         \\fBblockwatch\\fR(8), \\fBblockwatch\\-launch\\fR(1)\n",
    );
    Page {
        file_name: "blockwatch.toml.5".to_owned(),
        text,
    }
}

fn key_entry(key: &ConfigKey) -> String {
    let default = match key.default {
        Some(value) => format!("Default: {}.", roff(value)),
        None => format!("Unset: {}.", roff(key.unset)),
    };
    format!(
        ".TP\n\\fB{}\\fR = \\fI{}\\fR\n{}\n.br\n{}\n",
        roff(key.name),
        roff(key.value),
        roff(key.description),
        default
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(name: &str) -> Page {
        match pages() {
            Ok(pages) => pages
                .into_iter()
                .find(|p| p.file_name == name)
                .unwrap_or_else(|| panic!("no page {name}")),
            Err(e) => panic!("{e}"),
        }
    }

    /// Words as a reader sees them: roff's `\-` is a dash.
    fn plain(page: &Page) -> String {
        page.text
            .replace("\\-", "-")
            .replace("\\fB", "")
            .replace("\\fR", "")
    }

    fn assert_names_every_subcommand(file: &str, cmd: &clap::Command) {
        let text = plain(&page(file));
        assert!(text.contains("\n.TH "), "{file}: {text}");
        let name = cmd.get_name().to_owned();
        let subs: Vec<_> = documented_subcommands(cmd)
            .map(|s| s.get_name().to_owned())
            .collect();
        assert!(!subs.is_empty(), "{file}");
        for sub in subs {
            let heading = format!(".SH \"{}\"", format!("{name} {sub}").to_uppercase());
            assert!(text.contains(&heading), "{file} lacks {heading}");
        }
    }

    #[test]
    fn the_agent_page_has_a_section_for_every_subcommand() {
        assert_names_every_subcommand("blockwatch.8", &blockwatch::cli::Cli::command());
        let text = plain(&page("blockwatch.8"));
        assert!(text.contains("--config"), "{text}");
        assert!(text.contains("Exit codes"), "{text}");
    }

    #[test]
    fn the_launcher_page_has_a_section_for_every_subcommand() {
        assert_names_every_subcommand(
            "blockwatch-launch.1",
            &blockwatch_launch::cli::Cli::command(),
        );
        assert!(plain(&page("blockwatch-launch.1")).contains("--compute-environment"));
    }

    #[test]
    fn the_config_page_names_every_key_with_its_default() {
        let text = plain(&page("blockwatch.toml.5"));
        assert!(text.starts_with(".TH BLOCKWATCH.TOML 5"), "{text}");
        for key in CONFIG_KEYS {
            assert!(
                text.contains(&format!(".TP\n{} = ", key.name)),
                "{} missing",
                key.name
            );
            if let Some(default) = key.default {
                assert!(
                    text.contains(&format!("Default: {default}.")),
                    "{}",
                    key.name
                );
            }
        }
    }

    #[test]
    fn code_spans_are_bold_and_no_backtick_is_left() {
        assert_eq!(
            roff("set `drain_lead` first"),
            "set \\fBdrain_lead\\fR first"
        );
        let page = page("blockwatch.toml.5");
        assert!(!page.text.contains('`'), "{}", page.text);
    }

    #[test]
    fn a_leading_dot_or_a_backslash_cannot_become_a_request() {
        assert_eq!(roff(".x"), "\\&.x");
        assert_eq!(roff("a\\b"), "a\\eb");
    }
}
