//! A single-pass gzip encoder for small, complete bodies (gzip level 1).
//!
//! zlib's level 1 clears a 128 KiB hash table for every stream, which for a 2 KiB API response
//! costs more than compressing it. This encoder does what HAProxy's SLZ does instead: greedy
//! LZ77 over a small hash of 4-byte sequences, written with DEFLATE's fixed Huffman codes
//! (RFC 1951 §3.2.6), so there is no table to build and only 16 KiB of state to clear. The
//! output is ordinary gzip (RFC 1952), a little larger than zlib's level 1.

/// Positions hashed: 2^12 entries of 4 bytes.
const HASH_BITS: u32 = 12;
/// Longest distance DEFLATE can express.
const MAX_DISTANCE: usize = 32_768;
/// Shortest match worth a length/distance pair.
const MIN_MATCH: usize = 4;
/// Longest match DEFLATE can express.
const MAX_MATCH: usize = 258;

/// Lengths 3..=258: base of each length code 257..=285 and its extra bits (RFC 1951 §3.2.5).
const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Distances 1..=32768: base of each distance code 0..=29 and its extra bits.
const DISTANCE_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Appends the gzip encoding of `input` to `output`.
pub fn gzip(input: &[u8], output: &mut Vec<u8>) {
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    output.reserve(input.len() / 2 + 64);
    output.extend_from_slice(&HEADER);
    deflate(input, output);
    let mut crc = flate2::Crc::new();
    crc.update(input);
    output.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32.
    output.extend_from_slice(&(input.len() as u32).to_le_bytes());
}

/// Appends one final fixed-Huffman DEFLATE block holding `input`.
fn deflate(input: &[u8], output: &mut Vec<u8>) {
    let mut bits = BitWriter::new(output);
    // BFINAL = 1, BTYPE = 01 (fixed Huffman codes).
    bits.put(0b011, 3);
    // Position + 1 of the last occurrence of each hashed 4-byte sequence (0 = none).
    let mut last_seen = [0u32; 1 << HASH_BITS];
    let mut position = 0;
    while position + MIN_MATCH <= input.len() {
        let sequence = read_u32(input, position);
        let slot = (sequence.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize;
        let candidate = last_seen[slot] as usize;
        last_seen[slot] = position as u32 + 1;
        if candidate > 0 {
            let earlier = candidate - 1;
            let distance = position - earlier;
            if distance <= MAX_DISTANCE && read_u32(input, earlier) == sequence {
                let limit = MAX_MATCH.min(input.len() - position);
                let length = MIN_MATCH
                    + common_prefix(
                        &input[earlier + MIN_MATCH..],
                        &input[position + MIN_MATCH..position + limit],
                    );
                bits.put_match(length, distance);
                position += length;
                continue;
            }
        }
        bits.put_literal(input[position]);
        position += 1;
    }
    for &byte in &input[position..] {
        bits.put_literal(byte);
    }
    bits.put_symbol(256);
    bits.finish();
}

/// Length of the common prefix of `a` and `b` (at most `b.len()`), eight bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut length = 0;
    while length + 8 <= b.len() {
        let x = u64::from_le_bytes(a[length..length + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[length..length + 8].try_into().unwrap_or([0; 8]));
        let difference = x ^ y;
        if difference != 0 {
            return length + (difference.trailing_zeros() / 8) as usize;
        }
        length += 8;
    }
    while length < b.len() && a[length] == b[length] {
        length += 1;
    }
    length
}

fn read_u32(input: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]])
}

/// Writes DEFLATE's least-significant-bit-first bit stream.
struct BitWriter<'a> {
    output: &'a mut Vec<u8>,
    pending: u64,
    count: u32,
}

impl<'a> BitWriter<'a> {
    fn new(output: &'a mut Vec<u8>) -> Self {
        BitWriter {
            output,
            pending: 0,
            count: 0,
        }
    }

    /// Appends the low `length` bits of `value` (at most 32).
    fn put(&mut self, value: u32, length: u32) {
        self.pending |= u64::from(value) << self.count;
        self.count += length;
        if self.count >= 32 {
            self.output
                .extend_from_slice(&(self.pending as u32).to_le_bytes());
            self.pending >>= 32;
            self.count -= 32;
        }
    }

    /// Appends a literal/length symbol with its fixed Huffman code.
    fn put_symbol(&mut self, symbol: u16) {
        let (code, length) = LITERAL_LENGTH_CODES[usize::from(symbol)];
        self.put(u32::from(code), u32::from(length));
    }

    fn put_literal(&mut self, byte: u8) {
        self.put_symbol(u16::from(byte));
    }

    fn put_match(&mut self, length: usize, distance: usize) {
        let length_code = usize::from(LENGTH_CODE_OF[length]);
        self.put_symbol(257 + length_code as u16);
        let extra = u32::from(LENGTH_EXTRA[length_code]);
        if extra > 0 {
            self.put(
                (length - usize::from(LENGTH_BASE[length_code])) as u32,
                extra,
            );
        }
        let distance_code =
            DISTANCE_BASE.partition_point(|&base| usize::from(base) <= distance) - 1;
        // Distance codes are fixed 5-bit codes.
        self.put(reverse(distance_code as u32, 5), 5);
        let extra = u32::from(DISTANCE_EXTRA[distance_code]);
        if extra > 0 {
            self.put(
                (distance - usize::from(DISTANCE_BASE[distance_code])) as u32,
                extra,
            );
        }
    }

    /// Writes the remaining bits, padding the last byte with zeros.
    fn finish(mut self) {
        while self.count > 0 {
            self.output.push(self.pending as u8);
            self.pending >>= 8;
            self.count = self.count.saturating_sub(8);
        }
    }
}

const fn reverse(code: u32, length: u32) -> u32 {
    code.reverse_bits() >> (32 - length)
}

/// The fixed Huffman code of each literal/length symbol, bit-reversed for the LSB-first
/// stream (Huffman codes are defined most-significant bit first), and its length.
const LITERAL_LENGTH_CODES: [(u16, u8); 288] = {
    let mut codes = [(0u16, 0u8); 288];
    let mut symbol = 0;
    while symbol < 288 {
        let (code, length) = match symbol {
            0..=143 => (0x30 + symbol, 8),
            144..=255 => (0x190 + symbol - 144, 9),
            256..=279 => (symbol - 256, 7),
            _ => (0xC0 + symbol - 280, 8),
        };
        codes[symbol as usize] = (reverse(code, length) as u16, length as u8);
        symbol += 1;
    }
    codes
};

/// The length code (index into `LENGTH_BASE`) of each match length 3..=258.
const LENGTH_CODE_OF: [u8; MAX_MATCH + 1] = {
    let mut table = [0u8; MAX_MATCH + 1];
    let mut code = 0;
    let mut length = 3;
    while length <= MAX_MATCH {
        // 258 has a code of its own (285) although 284's range would reach it.
        while code + 1 < LENGTH_BASE.len() && LENGTH_BASE[code + 1] as usize <= length {
            code += 1;
        }
        table[length] = code as u8;
        length += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn round_trip(input: &[u8]) -> Vec<u8> {
        let mut compressed = Vec::new();
        gzip(input, &mut compressed);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, input, "round trip of {} bytes", input.len());
        compressed
    }

    #[test]
    fn edge_cases_round_trip() {
        for input in [
            &b""[..],
            b"a",
            b"abc",
            b"abcd",
            b"abcdabcd",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            round_trip(input);
        }
        // Every byte value, the 9-bit literal codes included.
        round_trip(&(0..=255u8).collect::<Vec<_>>());
        // Runs longer than the longest match, and the longest distance.
        round_trip(&vec![7u8; 10_000]);
        let mut far = vec![0u8; MAX_DISTANCE + 100];
        far[..8].copy_from_slice(b"12345678");
        far[MAX_DISTANCE..MAX_DISTANCE + 8].copy_from_slice(b"12345678");
        for (index, byte) in far.iter_mut().enumerate().skip(8).take(MAX_DISTANCE - 8) {
            *byte = (index * 7 % 251) as u8;
        }
        round_trip(&far);
    }

    #[test]
    fn every_match_length_and_many_distances_round_trip() {
        let mut input = Vec::new();
        let mut state = 0x1234_5678u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for length in MIN_MATCH..=MAX_MATCH + 3 {
            let start = input.len();
            for _ in 0..length {
                input.push(next() as u8);
            }
            let gap = (next() % 40_000) as usize;
            for _ in 0..gap.min(5_000) {
                input.push(next() as u8);
            }
            let copy = input[start..start + length].to_vec();
            input.extend_from_slice(&copy);
        }
        round_trip(&input);
    }

    #[test]
    fn random_mixtures_of_copies_and_noise_round_trip() {
        let mut state = 0x9E37_79B9u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as usize
        };
        for _ in 0..200 {
            let target = next() % 6_000;
            let mut input: Vec<u8> = Vec::with_capacity(target);
            while input.len() < target {
                if input.len() > 8 && next() % 2 == 0 {
                    let start = next() % (input.len() - 4);
                    let length = (next() % 300).min(input.len() - start);
                    let copy = input[start..start + length].to_vec();
                    input.extend_from_slice(&copy);
                } else {
                    let alphabet = 1 + next() % 255;
                    for _ in 0..next() % 20 {
                        input.push((next() % alphabet) as u8);
                    }
                }
            }
            round_trip(&input);
        }
    }

    #[test]
    fn json_compresses_like_a_fast_gzip() {
        let item = r#"{"id":"0192f1c2-aaaa-7bbb-8ccc-123456789abc","sku":"SKU-1","name":"Pallet jack","price":{"amount":129900,"currency":"EUR"},"stock":12},"#;
        let body = format!("{{\"items\":[{}]}}", item.repeat(16));
        let compressed = round_trip(body.as_bytes());
        assert!(
            compressed.len() * 4 < body.len(),
            "{} -> {} bytes",
            body.len(),
            compressed.len()
        );
    }
}
