//! `blockwatch-mangen DIR`: writes the man pages (roff, uncompressed) into
//! DIR; `packaging/build.sh` compresses and packages them.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: blockwatch-mangen DIR");
        return ExitCode::from(2);
    };
    let written = blockwatch_mangen::pages().and_then(|pages| {
        std::fs::create_dir_all(&dir)?;
        pages
            .iter()
            .try_for_each(|page| std::fs::write(dir.join(&page.file_name), &page.text))
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("blockwatch-mangen: {}: {err}", dir.display());
            ExitCode::FAILURE
        }
    }
}
