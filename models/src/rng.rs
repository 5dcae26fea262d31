//! A tiny seeded generator (xorshift64) for the places that need reproducible numbers: weight
//! initialisation, golden probe rows, mini-batch shuffling, benchmark bodies. Not for secrets.

/// xorshift64 (13, 7, 17). The state must not be zero; constructors make sure of it.
#[derive(Debug, Clone)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// A generator seeded with `seed`: the seed is first mixed with splitmix64, so that
    /// neighbouring seeds give unrelated sequences (and the state is never zero).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift {
            state: if z == 0 { 0x9E37_79B9_7F4A_7C15 } else { z },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// A uniform value in [0, 1), from the top 24 bits.
    pub fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_sequence_in_the_unit_interval() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        for _ in 0..1000 {
            let x = a.next_unit();
            assert_eq!(x, b.next_unit());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(XorShift::new(8).next_u64(), XorShift::new(7).next_u64());
        assert_ne!(XorShift::new(2).next_u64(), XorShift::new(3).next_u64());
        assert_ne!(XorShift::new(0).next_u64(), 0);
    }
}
