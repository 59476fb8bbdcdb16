//! Files the daemon makes: its sockets are its owner's only.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Makes a socket the daemon listens on (control, keeper, Task API,
/// controller) reachable by root only.
pub fn private_socket(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))
}
