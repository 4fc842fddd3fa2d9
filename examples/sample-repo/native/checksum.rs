/// Checksums job payloads so workers can detect corruption.
pub struct Checksum {
    state: u32,
}

impl Checksum {
    pub fn new() -> Self {
        Checksum { state: 0x811c9dc5 }
    }

    /// FNV-1a over the payload bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.state ^= *b as u32;
            self.state = self.state.wrapping_mul(0x01000193);
        }
    }

    pub fn finish(&self) -> u32 {
        self.state
    }
}
