//! Turns a WASI preview 1 core module (what Go's `GOOS=wasip1` and clang with wasi-libc
//! produce) into a `wasi:cli/run` command component, so every language's build ends in a
//! component the runtime can load. The adapter that maps preview 1 calls onto WASI 0.2 is the
//! one released alongside the wasmtime version Skiff runs.

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
};
use wasmparser::{Encoding, ExternalKind, Parser, Payload};

/// Why a core module could not be made into a component.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    /// Not a core module to begin with.
    #[error("not a WebAssembly core module")]
    NotCoreModule,
    /// The module cannot be parsed.
    #[error("the module cannot be read: {0}")]
    Parse(String),
    /// A module without `_start` is a library or reactor, not a program that can serve CGI.
    #[error(
        "the module exports no _start function; build a program (a `main`), not a library or reactor"
    )]
    NoStart,
    /// The module imports something the preview 1 adapter does not provide, or another
    /// encoding problem.
    #[error("wrapping it with the WASI preview 1 command adapter failed: {0}")]
    Encode(String),
}

/// Whether `bytes` is a core WebAssembly module (rather than a component or not wasm at all).
pub fn is_core_module(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
        && matches!(
            Parser::new(0).parse_all(bytes).next(),
            Some(Ok(Payload::Version {
                encoding: Encoding::Module,
                ..
            }))
        )
}

/// Wraps a preview 1 command module (one exporting `_start`) into a `wasi:cli/run` component.
pub fn preview1_command(module: &[u8]) -> Result<Vec<u8>, AdaptError> {
    if !is_core_module(module) {
        return Err(AdaptError::NotCoreModule);
    }
    if !exports_start(module)? {
        return Err(AdaptError::NoStart);
    }
    // wit-component reports `anyhow` errors; they are flattened to text at this boundary.
    let text = |e: &dyn std::fmt::Display| AdaptError::Encode(format!("{e:#}"));
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(|e| text(&e))?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .map_err(|e| text(&e))?
        .validate(true)
        .encode()
        .map_err(|e| text(&e))
}

fn exports_start(module: &[u8]) -> Result<bool, AdaptError> {
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| AdaptError::Parse(e.message().to_owned()))?;
        if let Payload::ExportSection(reader) = payload {
            for export in reader {
                let export = export.map_err(|e| AdaptError::Parse(e.message().to_owned()))?;
                if export.name == "_start" && export.kind == ExternalKind::Func {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::ProcessKind;

    /// A module with one memory and an empty `_start`, encoded by hand: the smallest program
    /// the command adapter accepts.
    const EMPTY_PROGRAM: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
        0x03, 0x02, 0x01, 0x00, // functions: one of type 0
        0x05, 0x03, 0x01, 0x00, 0x01, // memory: min 1 page
        0x07, 0x13, 0x02, // exports: 2
        0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // "memory"
        0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // "_start"
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
    ];

    #[test]
    fn wraps_a_program_into_a_command_component() {
        assert!(is_core_module(EMPTY_PROGRAM));
        let component = preview1_command(EMPTY_PROGRAM).expect("wraps");
        assert!(!is_core_module(&component));
        assert_eq!(
            crate::inspect::process_kind(&component).expect("inspects"),
            ProcessKind::Command
        );
    }

    #[test]
    fn refuses_modules_it_cannot_run() {
        assert!(matches!(
            preview1_command(b"\0asm\x0d\0\x01\0"),
            Err(AdaptError::NotCoreModule)
        ));
        // Same module with `_start` renamed: a library, not a program.
        let mut library = EMPTY_PROGRAM.to_vec();
        let at = library
            .windows(6)
            .position(|w| w == b"_start")
            .expect("has _start");
        library[at..at + 6].copy_from_slice(b"_other");
        assert!(matches!(
            preview1_command(&library),
            Err(AdaptError::NoStart)
        ));
    }
}
