//! Write order: which key protects which slot (`protected_by`), checked for cycles, and the
//! order keys are written in so that every protector is in place first.

use core::fmt;
use std::collections::HashMap;

use crate::error::Result;

use super::VENDOR_TRANSPORT;
use super::key::KeySpec;
use super::schema::{TemplateFault, template_err};

/// The key protecting a slot for its secure-messaging write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Protector {
    /// The card vendor's transport key of a blank card.
    VendorTransport,
    /// A key of the template (by name), usually the directory master key.
    Key(String),
}

impl fmt::Display for Protector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protector::VendorTransport => f.write_str(VENDOR_TRANSPORT),
            Protector::Key(name) => f.write_str(name),
        }
    }
}

/// Resolves `protected_by`, refuses cycles, and returns the write order (indices into `keys`):
/// every key after its protector, otherwise in file order. With `allow_external`, names that
/// are not in `keys` are taken as keys of a base template (an unmerged extension).
pub(super) fn link(keys: &[KeySpec], allow_external: bool) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.name.as_str(), i))
        .collect();
    let mut parent: Vec<Option<usize>> = vec![None; keys.len()];
    for (i, k) in keys.iter().enumerate() {
        if let Protector::Key(p) = &k.protected_by {
            match index.get(p.as_str()) {
                Some(&j) => parent[i] = Some(j),
                None if allow_external => {}
                None => {
                    return Err(template_err(
                        k.protected_by_line,
                        TemplateFault::UnknownProtector(p.clone()),
                    ));
                }
            }
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; keys.len()];
    let mut order = Vec::with_capacity(keys.len());
    for start in 0..keys.len() {
        // Walk up the protector chain to a key already placed (or a root), then place the
        // chain top-down. Each key has one protector, so a repeated key on the path is a cycle.
        let mut path = Vec::new();
        let mut cur = Some(start);
        while let Some(c) = cur {
            match mark[c] {
                Mark::Done => break,
                Mark::OnPath => {
                    let from = path.iter().position(|&x| x == c).unwrap_or(0);
                    let cycle = &path[from..];
                    // Report at the cycle member that comes first in the file.
                    let first = cycle.iter().copied().min().unwrap_or(c);
                    let pos = cycle.iter().position(|&x| x == first).unwrap_or(0);
                    let mut names: Vec<String> = cycle[pos..]
                        .iter()
                        .chain(&cycle[..pos])
                        .map(|&x| keys[x].name.clone())
                        .collect();
                    names.push(keys[first].name.clone());
                    return Err(template_err(
                        keys[first].protected_by_line,
                        TemplateFault::ProtectorCycle(names),
                    ));
                }
                Mark::New => {
                    mark[c] = Mark::OnPath;
                    path.push(c);
                    cur = parent[c];
                }
            }
        }
        for &c in path.iter().rev() {
            mark[c] = Mark::Done;
            order.push(c);
        }
    }
    Ok(order)
}
