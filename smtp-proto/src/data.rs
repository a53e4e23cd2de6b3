//! TEMPORARY STUB (replaced by the real decoder).
#![allow(missing_docs, unreachable_pub)]
pub struct DataDecoder {
    start: bool,
    max: usize,
}
pub enum DecodeStep {
    Chunk {
        start: usize,
        end: usize,
        consumed: usize,
    },
    NeedMore {
        consumed: usize,
    },
    End {
        consumed: usize,
    },
}
impl DataDecoder {
    pub fn new(max: usize) -> Self {
        DataDecoder { start: true, max }
    }
    pub fn decode(&mut self, input: &[u8]) -> DecodeStep {
        if self.start {
            if input.starts_with(b".\r\n") {
                return DecodeStep::End { consumed: 3 };
            }
            if input.len() < 3 {
                return DecodeStep::NeedMore { consumed: 0 };
            }
            if input[0] == b'.' {
                self.start = false;
                return DecodeStep::NeedMore { consumed: 1 };
            }
        }
        match memchr::memmem::find(input, b"\r\n.") {
            Some(i) => {
                self.start = true;
                DecodeStep::Chunk {
                    start: 0,
                    end: i + 2,
                    consumed: i + 2,
                }
            }
            None => {
                let n = input.len().saturating_sub(2);
                self.start = false;
                DecodeStep::Chunk {
                    start: 0,
                    end: n,
                    consumed: n,
                }
            }
        }
    }
    pub fn saw_bare_lf(&self) -> bool {
        false
    }
    pub fn saw_bare_cr(&self) -> bool {
        false
    }
    pub fn saw_long_line(&self) -> bool {
        self.max == 0
    }
    pub fn body_len(&self) -> u64 {
        0
    }
    pub fn reset(&mut self) {
        self.start = true
    }
}
pub struct LineChecker;
impl LineChecker {
    pub fn new(_m: usize) -> Self {
        LineChecker
    }
    pub fn feed(&mut self, _c: &[u8]) {}
    pub fn finish(&mut self) {}
    pub fn saw_bare_lf(&self) -> bool {
        false
    }
    pub fn saw_bare_cr(&self) -> bool {
        false
    }
    pub fn saw_long_line(&self) -> bool {
        false
    }
    pub fn reset(&mut self) {}
}
