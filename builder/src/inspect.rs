//! Reads a WebAssembly file's top-level exports to decide how the runtime drives it, so that a
//! push of something that is not a usable component fails at build time, not at the first
//! request.

use skiff_core::ProcessKind;
use wasmparser::{Encoding, Parser, Payload};

/// Why a file cannot serve as a process type's component.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The path leaves the app tree.
    #[error("the component path must be inside the app")]
    OutsideApp,
    /// The file could not be read.
    #[error("cannot read the component: {0}")]
    Read(#[source] std::io::Error),
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file: {0}")]
    NotWasm(String),
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component; build for wasm32-wasip2 or wrap it with a WASI adapter"
    )]
    CoreModule,
    /// A preview 1 module that could not be wrapped into a component.
    #[error("a WASI preview 1 module that cannot become a component: {0}")]
    Adapt(#[source] crate::adapt::AdaptError),
    /// A component that exports neither entry point Skiff runs.
    #[error(
        "the component exports neither wasi:http/incoming-handler nor wasi:cli/run (exports: {0})"
    )]
    NoEntryPoint(String),
}

/// Lists the names a component exports at its top level.
pub fn component_exports(bytes: &[u8]) -> Result<Vec<String>, InspectError> {
    let mut exports = Vec::new();
    // Nested modules and components have their own export sections; only depth 0 counts.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| InspectError::NotWasm(e.message().to_owned()))?;
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } if depth == 0 => return Err(InspectError::CoreModule),
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export =
                        export.map_err(|e| InspectError::NotWasm(e.message().to_owned()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(exports)
}

/// Decides how the runtime drives the component in `bytes`.
pub fn process_kind(bytes: &[u8]) -> Result<ProcessKind, InspectError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(InspectError::NotWasm(
            "missing the \\0asm magic number".into(),
        ));
    }
    let exports = component_exports(bytes)?;
    let has = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
    if has("wasi:http/incoming-handler@") {
        Ok(ProcessKind::WasiHttp)
    } else if has("wasi:cli/run@") {
        Ok(ProcessKind::Command)
    } else {
        Err(InspectError::NoEntryPoint(if exports.is_empty() {
            "none".into()
        } else {
            exports.join(", ")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_wasm_and_core_modules() {
        assert!(matches!(
            process_kind(b"#!/bin/sh\n"),
            Err(InspectError::NotWasm(_))
        ));
        // The smallest valid core module: magic + version 1.
        assert!(matches!(
            process_kind(b"\0asm\x01\0\0\0"),
            Err(InspectError::CoreModule)
        ));
        // The smallest component: magic + component version/layer, no exports.
        assert!(matches!(
            process_kind(b"\0asm\x0d\0\x01\0"),
            Err(InspectError::NoEntryPoint(_))
        ));
    }
}
