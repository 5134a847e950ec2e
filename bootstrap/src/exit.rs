//! The launcher's exit codes: one table, from which `--help` is rendered and
//! which README.md repeats (a test compares them).

/// An exit code and what it means to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    pub meaning: &'static str,
}

pub const SUCCESS: Exit = Exit {
    code: 0,
    meaning: "launched, listed or extended (or dry run accepted)",
};
pub const INTERNAL: Exit = Exit {
    code: 1,
    meaning: "internal error",
};
pub const INVALID: Exit = Exit {
    code: 2,
    meaning: "invalid request (flags, duration, count, price, `--until`, combination)",
};
pub const COMPUTE_ENVIRONMENT: Exit = Exit {
    code: 3,
    meaning: "compute environment refused (not found, MANAGED)",
};
pub const SHORTFALL: Exit = Exit {
    code: 4,
    meaning: "insufficient capacity: fewer instances than `--min-count`",
};
pub const DENIED: Exit = Exit {
    code: 5,
    meaning: "AWS denied a call (the message names the action)",
};
pub const EC2_REFUSED: Exit = Exit {
    code: 6,
    meaning: "EC2 refused the request (price too low, spot blocks retired, not a Capacity Block)",
};
pub const REJECTED: Exit = Exit {
    code: 7,
    meaning: "AWS rejected the request for another reason",
};
pub const WAIT_TIMEOUT: Exit = Exit {
    code: 8,
    meaning: "`--wait` timed out",
};
pub const EXTEND_REFUSED: Exit = Exit {
    code: 9,
    meaning: "`extend` refused an instance (unknown, another compute environment, a Capacity Block, ended, or its new end is past); nothing was written",
};
pub const TEMPLATE_REFUSED: Exit = Exit {
    code: 10,
    meaning: "`--launch-template` refused (not found, not tagged for the compute environment, or its metadata options would break the join); nothing was launched",
};
pub const INTERRUPTED: Exit = Exit {
    code: 130,
    meaning: "interrupted (SIGINT or SIGTERM): the launch stopped after the AWS call under way, deleting what it created and printing what launched, or a `--wait` was given up; a second interrupt stops at once",
};
pub const TRANSIENT: Exit = Exit {
    code: 75,
    meaning: "transient: AWS unreachable or throttled after retries",
};

/// Every exit code, in order.
pub const TABLE: [Exit; 13] = [
    SUCCESS,
    INTERNAL,
    INVALID,
    COMPUTE_ENVIRONMENT,
    SHORTFALL,
    DENIED,
    EC2_REFUSED,
    REJECTED,
    WAIT_TIMEOUT,
    EXTEND_REFUSED,
    TEMPLATE_REFUSED,
    TRANSIENT,
    INTERRUPTED,
];

/// The table as `--help` shows it (without the README's code marks).
pub fn help() -> String {
    let mut text = String::from("Exit codes:");
    for exit in TABLE {
        text.push_str(&format!(
            "\n  {:<3} {}",
            exit.code,
            exit.meaning.replace('`', "")
        ));
    }
    text
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_order() {
        assert!(TABLE.windows(2).all(|w| w[0].code < w[1].code), "{TABLE:?}");
    }

    #[test]
    fn help_lists_every_code_with_its_meaning() {
        let help = help();
        assert!(help.starts_with("Exit codes:\n  0   launched"), "{help}");
        assert!(
            help.contains("\n  75  transient: AWS unreachable"),
            "{help}"
        );
        assert!(help.contains("fewer instances than --min-count"), "{help}");
        assert_eq!(help.lines().count(), TABLE.len() + 1);
    }

    /// README.md's launcher table says what this table says.
    #[test]
    fn the_readme_table_matches() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| exit | meaning |")
            .unwrap_or_else(|| panic!("README has no launcher exit-code table"));
        let rows: Vec<(u8, String)> = readme[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
                let code = cells[0].trim().parse().unwrap_or(u8::MAX);
                (code, cells[1..].join(" | ").trim().to_owned())
            })
            .collect();
        let table: Vec<(u8, String)> = TABLE
            .iter()
            .map(|e| (e.code, e.meaning.to_owned()))
            .collect();
        assert_eq!(rows, table);
    }
}
