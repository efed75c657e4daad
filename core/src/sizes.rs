//! Dyno sizes: the one table that says how much memory and concurrency each size gets.

/// One dyno size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DynoSize {
    /// The name users type (`standard-1x`).
    pub name: &'static str,
    /// Linear memory one instance may grow to, in MiB.
    pub memory_mib: u32,
    /// Requests one web dyno serves at once; beyond that it answers "full".
    pub concurrency: u32,
}

impl DynoSize {
    /// Linear memory in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }
}

/// Every size, smallest first.
pub const SIZES: &[DynoSize] = &[
    DynoSize {
        name: "eco",
        memory_mib: 64,
        concurrency: 10,
    },
    DynoSize {
        name: "basic",
        memory_mib: 128,
        concurrency: 20,
    },
    DynoSize {
        name: "standard-1x",
        memory_mib: 256,
        concurrency: 50,
    },
    DynoSize {
        name: "standard-2x",
        memory_mib: 512,
        concurrency: 100,
    },
    DynoSize {
        name: "performance-m",
        memory_mib: 2048,
        concurrency: 200,
    },
];

/// The size dynos get unless resized.
pub const DEFAULT_SIZE: &str = "standard-1x";

/// Looks a size up by name, case-insensitively.
pub fn size(name: &str) -> Option<DynoSize> {
    SIZES
        .iter()
        .copied()
        .find(|s| s.name.eq_ignore_ascii_case(name))
}

/// The largest memory any size allows, which sizes the instance pool's slots.
pub fn largest_memory_bytes() -> usize {
    SIZES
        .iter()
        .map(DynoSize::memory_bytes)
        .max()
        .unwrap_or(256 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_ordered_and_found() {
        assert!(SIZES.windows(2).all(|w| w[0].memory_mib < w[1].memory_mib));
        assert_eq!(size("Standard-2X").map(|s| s.memory_mib), Some(512));
        assert!(size(DEFAULT_SIZE).is_some());
        assert!(size("huge").is_none());
        assert_eq!(largest_memory_bytes(), 2048 << 20);
    }
}
