//! Chorus detection and song sections from chroma self-similarity.
//!
//! The method, step by step:
//! 1. Chroma frames are averaged into blocks of about 0.37 s and L2-normalised.
//! 2. For every lag `d` (a diagonal of the self-similarity matrix) and every
//!    transposition `k` of 12, the similarity of block `i` with block `i + d`
//!    transposed by `k` semitones is smoothed along the diagonal (about 3 s).
//!    The enhanced similarity is the maximum over transpositions, so a chorus
//!    repeated in another key still forms a line (the RefraiD idea, Goto 2006).
//! 3. Similarities are normalised per song (median -> 0, 95th percentile -> 1),
//!    and prefix sums along each diagonal make the mean similarity of any
//!    segment pair an O(1) lookup.
//! 4. Every candidate segment (start, length 6-40 s) collects its best
//!    non-overlapping repetitions whose mean similarity exceeds a threshold
//!    and whose every quarter repeats; a repetition scores half its mean
//!    similarity, half that of its weakest quarter.
//!    Its fitness is the length it covers by repetition (each repetition's
//!    length times its score above a neutral level), weighted by how
//!    typical its length is for a chorus, by its loudness relative to the
//!    song and by its number of separate appearances (back-to-back
//!    occurrences are one appearance of a repeated phrase): a simplified version of
//!    Müller's thumbnail fitness that prefers the most-repeated, loud part
//!    over a longer part repeated less often.
//! 5. The fittest segment and its repetitions are the chorus. Its ends are
//!    trimmed where the uncapped similarity along the repetition path falls
//!    well below its level in the middle (a chorus running on into the end of
//!    a verse that resembles the other verse). Removing the group and
//!    searching again yields the other repeated sections, labelled A, B, ...
//!    in order of first appearance.

/// STFT frames averaged into one block (16 x 23.2 ms = 0.37 s at 22050 Hz).
const BLOCK_FRAMES_LEN: usize = 16;
/// Most blocks analysed; longer songs get longer blocks (bounded memory: N^2/2).
const BLOCKS_MAX: usize = 1500;
/// Half-width of the diagonal smoothing, in seconds.
const SMOOTH_HALF_S: f64 = 1.5;
/// Shortest and longest section considered, in seconds.
const SECTION_MIN_S: f64 = 6.0;
const SECTION_MAX_S: f64 = 40.0;
/// Normalised mean similarity a repetition needs.
const REPEAT_THRESHOLD: f64 = 1.0;
/// Normalised similarities are capped here before averaging, so that a
/// perfectly matching half cannot carry a segment whose other half does not
/// repeat at all.
const SIMILARITY_CAP: f64 = 1.25;
/// Similarity level that counts as neutral in the fitness: blocks above it
/// add to a segment's worth, blocks below it (no repetition) subtract.
const FITNESS_BASELINE: f64 = 0.8;
/// Section lengths typical of a chorus get full weight; shorter or longer
/// ones are discounted so that half a chorus, or verse plus chorus, loses.
const TYPICAL_MIN_S: f64 = 10.0;
const TYPICAL_MAX_S: f64 = 25.0;
const ATYPICAL_WEIGHT: f64 = 0.6;
/// Transposed repetitions count slightly less than exact ones.
const TRANSPOSED_WEIGHT: f32 = 0.95;
/// Most labelled section groups reported.
const GROUPS_MAX: usize = 8;
/// Length of the preview clip placed on the chorus.
pub const PREVIEW_LEN_S: f64 = 30.0;

/// The detected chorus.
#[derive(Debug, Clone, PartialEq)]
pub struct Chorus {
    pub start_s: f64,
    pub end_s: f64,
    /// In [0, 1]: how clearly this segment repeats.
    pub confidence: f64,
}

/// One occurrence of a repeated section.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// "A", "B", ...: occurrences of the same material share a label.
    pub label: String,
    pub start_s: f64,
    pub end_s: f64,
    pub is_chorus: bool,
}

/// The repetition structure of a song.
#[derive(Debug, Clone, PartialEq)]
pub struct Structure {
    pub chorus: Option<Chorus>,
    pub sections: Vec<Section>,
    pub preview_start_s: f64,
}

/// A group of mutually repeating segments, in blocks.
#[derive(Debug, Clone)]
struct Group {
    starts: Vec<usize>,
    /// The segment the search started from (one of `starts`).
    origin: usize,
    len: usize,
    fitness: f64,
    mean_score: f64,
}

/// Enhanced, normalised similarity with per-diagonal prefix sums.
struct Similarity {
    blocks_len: usize,
    /// `prefix[d][i]`: sum of similarities of pairs (j, j + d) for j < i.
    prefix: Vec<Vec<f64>>,
    /// `diagonals[d][i]`: similarity of the pair (i, i + d), normalised but
    /// not capped, so that near-identical repeats stand out from merely
    /// similar ones.
    diagonals: Vec<Vec<f32>>,
}

impl Similarity {
    /// Mean similarity of segment `[a, a + len)` with `[b, b + len)`.
    fn mean(&self, a: usize, b: usize, len: usize) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let d = hi - lo;
        if d == 0 || hi + len > self.blocks_len {
            return f64::NEG_INFINITY;
        }
        let row = &self.prefix[d];
        (row[lo + len] - row[lo]) / len as f64
    }
}

impl Similarity {
    /// Uncapped similarity of blocks `a` and `b`.
    fn at(&self, a: usize, b: usize) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        self.diagonals
            .get(hi - lo)
            .and_then(|d| d.get(lo))
            .map_or(f64::NEG_INFINITY, |&v| f64::from(v))
    }

    /// Mean similarity of the weakest quarter of the pair: a repetition is
    /// only as convincing as its least similar stretch.
    fn weakest_part(&self, a: usize, b: usize, len: usize) -> f64 {
        const PARTS_LEN: usize = 4;
        let part_len = (len / PARTS_LEN).max(1);
        (0..PARTS_LEN)
            .map(|p| {
                let offset = (p * part_len).min(len - part_len);
                self.mean(a + offset, b + offset, part_len)
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// How well `[b, b + len)` repeats `[a, a + len)`, or `None` when some
    /// quarter does not repeat at all (a long stretch without repetition
    /// must not hide behind a strong average). Half the mean, half the
    /// weakest quarter: a segment that runs on into a merely similar section
    /// (say, the end of a verse before a chorus, where verses resemble each
    /// other) scores below the repeated section alone.
    fn repetition(&self, a: usize, b: usize, len: usize) -> Option<f64> {
        let mean = self.mean(a, b, len);
        if mean < REPEAT_THRESHOLD {
            return None;
        }
        let weakest = self.weakest_part(a, b, len);
        (weakest >= FITNESS_BASELINE).then_some(0.5 * (mean + weakest))
    }
}

/// Finds the chorus and repeated sections from per-frame chroma and RMS.
pub fn detect(chroma: &[[f32; 12]], rms: &[f32], frame_rate_hz: f64) -> Structure {
    let duration_s = chroma.len() as f64 / frame_rate_hz;
    let block_frames_len = BLOCK_FRAMES_LEN.max(chroma.len().div_ceil(BLOCKS_MAX));
    let block_s = block_frames_len as f64 / frame_rate_hz;
    let (blocks, energy) = blocks_of(chroma, rms, block_frames_len);
    let fallback = Structure {
        chorus: None,
        sections: Vec::new(),
        preview_start_s: preview_start(duration_s * 0.3, duration_s),
    };
    let len_min = (SECTION_MIN_S / block_s).ceil() as usize;
    if blocks.len() < 2 * len_min + 1 {
        return fallback;
    }
    let smooth_half = (SMOOTH_HALF_S / block_s).round() as usize;
    let similarity = similarity_of(&blocks, smooth_half, len_min);
    let len_max = ((SECTION_MAX_S / block_s).floor() as usize).min(blocks.len() / 2);
    let mean_energy = energy.iter().sum::<f64>() / energy.len() as f64;
    let mut taken = vec![false; blocks.len()];
    let mut groups: Vec<Group> = Vec::new();
    while groups.len() < GROUPS_MAX {
        let find =
            |grid: Grid| best_group(&similarity, &energy, mean_energy, &taken, grid, block_s);
        // Coarse to fine: every other start and every fourth length first,
        // then every start and length around the winner (4x fewer evaluations).
        let Some(coarse) = find(Grid {
            lens: len_min..=len_max,
            len_step: COARSE_LEN_STEP,
            starts: 0..=blocks.len(),
            start_step: COARSE_START_STEP,
        }) else {
            break;
        };
        let (start, len) = (coarse.origin, coarse.len);
        let fine = find(Grid {
            lens: len.saturating_sub(COARSE_LEN_STEP).max(len_min)
                ..=(len + COARSE_LEN_STEP).min(len_max),
            len_step: 1,
            starts: start.saturating_sub(COARSE_START_STEP)..=start + COARSE_START_STEP,
            start_step: 1,
        });
        let group = match fine {
            Some(fine) if fine.fitness >= coarse.fitness => fine,
            _ => coarse,
        };
        let group = trimmed(group, &similarity, len_min);
        for &start in &group.starts {
            taken[start..start + group.len]
                .iter_mut()
                .for_each(|t| *t = true);
        }
        groups.push(group);
    }
    let Some(chorus_group) = groups.first().cloned() else {
        return fallback;
    };
    let to_s = |block: usize| (block as f64 * block_s).min(duration_s);
    let first = chorus_group.starts[0];
    let chorus = Chorus {
        start_s: to_s(first),
        end_s: to_s(first + chorus_group.len),
        confidence: confidence(&chorus_group),
    };
    // Label groups in order of first appearance: the song reads A, B, A, B, C, ...
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| groups[g].starts[0]);
    let mut sections = Vec::new();
    for (rank, &g) in order.iter().enumerate() {
        let label = ((b'A' + rank as u8) as char).to_string();
        for &start in &groups[g].starts {
            sections.push(Section {
                label: label.clone(),
                start_s: to_s(start),
                end_s: to_s(start + groups[g].len),
                is_chorus: g == 0,
            });
        }
    }
    sections.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    Structure {
        preview_start_s: preview_start(chorus.start_s, duration_s),
        chorus: Some(chorus),
        sections,
    }
}

/// Step 5 detail: trims the ends of a group where its occurrences are much
/// less alike than in its middle. The search picks lengths on a grid and a
/// long, strongly repeated section can carry a few seconds of a merely
/// similar neighbour; along the path of the repetition, the similarity of
/// each block pair shows where the repeated section really begins and ends.
fn trimmed(mut group: Group, similarity: &Similarity, len_min: usize) -> Group {
    let others: Vec<usize> = group
        .starts
        .iter()
        .copied()
        .filter(|&s| s != group.origin)
        .collect();
    if others.is_empty() {
        return group;
    }
    let profile: Vec<f64> = (0..group.len)
        .map(|j| {
            others
                .iter()
                .map(|&o| similarity.at(group.origin + j, o + j))
                .sum::<f64>()
                / others.len() as f64
        })
        .collect();
    let mut sorted = profile.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let level = 0.5 * (median + FITNESS_BASELINE);
    let trim_max = group.len / 3;
    let lead = profile
        .iter()
        .take(trim_max)
        .take_while(|&&p| p < level)
        .count();
    let tail = profile
        .iter()
        .rev()
        .take(trim_max)
        .take_while(|&&p| p < level)
        .count();
    if group.len - lead - tail >= len_min {
        group.starts.iter_mut().for_each(|s| *s += lead);
        group.origin += lead;
        group.len -= lead + tail;
    }
    group
}

/// Separate appearances of a section: occurrences that follow one another
/// (the next one starts less than half a length after the previous one
/// ends) are one appearance of a passage that repeats a short phrase, like
/// a riff running through a verse, not separate returns of a section.
fn appearances(starts: &[usize], len: usize) -> usize {
    let mut sorted = starts.to_vec();
    sorted.sort_unstable();
    1 + sorted
        .windows(2)
        .filter(|pair| pair[1] - pair[0] > len + len / 2)
        .count()
}

/// Weight of the number of appearances, 1 for a section heard twice. The
/// summed excess similarity already grows with each repetition; this extra
/// weight makes the section heard most often win over a section heard
/// less often that is a little longer or louder (a chorus over a verse).
fn occurrence_weight(occurrences: usize) -> f64 {
    (occurrences as f64 / 2.0).sqrt()
}

/// Weight of a section length: 1 inside the typical chorus range, falling
/// linearly to [`ATYPICAL_WEIGHT`] at the shortest and longest lengths.
fn length_weight(len_s: f64) -> f64 {
    let drop = 1.0 - ATYPICAL_WEIGHT;
    if len_s < TYPICAL_MIN_S {
        1.0 - drop * ((TYPICAL_MIN_S - len_s) / (TYPICAL_MIN_S - SECTION_MIN_S)).min(1.0)
    } else if len_s > TYPICAL_MAX_S {
        1.0 - drop * ((len_s - TYPICAL_MAX_S) / (SECTION_MAX_S - TYPICAL_MAX_S)).min(1.0)
    } else {
        1.0
    }
}

fn preview_start(wanted_s: f64, duration_s: f64) -> f64 {
    wanted_s.min(duration_s - PREVIEW_LEN_S).max(0.0)
}

fn confidence(group: &Group) -> f64 {
    // Similarity well above the song's usual level and more than one
    // repetition both make the choice clearer.
    let clarity = 1.0 - (-(group.mean_score - REPEAT_THRESHOLD + 0.5).max(0.0)).exp();
    let repeats = ((group.starts.len() - 1) as f64 / 2.0).min(1.0);
    (clarity * (0.5 + 0.5 * repeats)).clamp(0.0, 1.0)
}

/// Averages frames into blocks: L2-normalised chroma and mean RMS per block.
fn blocks_of(chroma: &[[f32; 12]], rms: &[f32], block_len: usize) -> (Vec<[f32; 12]>, Vec<f64>) {
    let mut blocks = Vec::with_capacity(chroma.len() / block_len + 1);
    let mut energy = Vec::with_capacity(blocks.capacity());
    for (index, frames) in chroma.chunks(block_len).enumerate() {
        let mut sum = [0.0f32; 12];
        for frame in frames {
            for (s, v) in sum.iter_mut().zip(frame) {
                *s += v;
            }
        }
        let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            sum.iter_mut().for_each(|v| *v /= norm);
        }
        blocks.push(sum);
        let rms_span = rms.get(index * block_len..((index + 1) * block_len).min(rms.len()));
        let block_rms = rms_span.filter(|s| !s.is_empty()).map_or(0.0, |s| {
            s.iter().map(|&v| f64::from(v)).sum::<f64>() / s.len() as f64
        });
        energy.push(block_rms);
    }
    (blocks, energy)
}

/// Steps 2 and 3: enhanced similarity along every diagonal, normalised, as prefix sums.
fn similarity_of(blocks: &[[f32; 12]], smooth_half: usize, lag_min: usize) -> Similarity {
    let n = blocks.len();
    let mut diagonals: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut raw = Vec::with_capacity(n);
    let mut smooth = Vec::with_capacity(n);
    for d in 1..n {
        let len = n - d;
        let mut best = vec![f32::NEG_INFINITY; len];
        for shift in 0..12 {
            raw.clear();
            raw.extend((0..len).map(|i| {
                let (a, b) = (&blocks[i], &blocks[i + d]);
                (0..12).map(|c| a[c] * b[(c + shift) % 12]).sum::<f32>()
            }));
            moving_mean(&raw, smooth_half, &mut smooth);
            let weight = if shift == 0 { 1.0 } else { TRANSPOSED_WEIGHT };
            for (b, s) in best.iter_mut().zip(&smooth) {
                *b = b.max(s * weight);
            }
        }
        diagonals[d] = best;
    }
    // Normalise against the song's own distribution of off-diagonal similarity.
    let mut sample: Vec<f32> = diagonals[lag_min.min(n - 1)..]
        .iter()
        .flatten()
        .copied()
        .collect();
    let (median, high) = if sample.len() > 20 {
        let mid = sample.len() / 2;
        let median = *sample.select_nth_unstable_by(mid, f32::total_cmp).1;
        let top = sample.len() * 95 / 100;
        let high = *sample.select_nth_unstable_by(top, f32::total_cmp).1;
        (f64::from(median), f64::from(high))
    } else {
        (0.0, 1.0)
    };
    let scale = 1.0 / (high - median).max(1e-3);
    let mut prefix = Vec::with_capacity(n);
    for diagonal in diagonals.iter_mut() {
        let mut row = Vec::with_capacity(diagonal.len() + 1);
        let mut acc = 0.0f64;
        row.push(acc);
        for v in diagonal.iter_mut() {
            let normalised = (f64::from(*v) - median) * scale;
            *v = normalised as f32;
            acc += normalised.min(SIMILARITY_CAP);
            row.push(acc);
        }
        prefix.push(row);
    }
    Similarity {
        blocks_len: n,
        prefix,
        diagonals,
    }
}

fn moving_mean(values: &[f32], half: usize, out: &mut Vec<f32>) {
    out.clear();
    let mut prefix = Vec::with_capacity(values.len() + 1);
    prefix.push(0.0f32);
    let mut acc = 0.0;
    for v in values {
        acc += v;
        prefix.push(acc);
    }
    out.extend((0..values.len()).map(|i| {
        let lo = i.saturating_sub(half);
        let hi = (i + half + 1).min(values.len());
        (prefix[hi] - prefix[lo]) / (hi - lo) as f32
    }));
}

/// Step of the coarse search over lengths and starts, in blocks.
const COARSE_LEN_STEP: usize = 4;
const COARSE_START_STEP: usize = 2;

/// The (length, start) grid one search evaluates, in blocks.
struct Grid {
    lens: std::ops::RangeInclusive<usize>,
    len_step: usize,
    starts: std::ops::RangeInclusive<usize>,
    start_step: usize,
}

/// Step 4: the fittest segment among those not yet taken, with its repetitions.
fn best_group(
    similarity: &Similarity,
    energy: &[f64],
    mean_energy: f64,
    taken: &[bool],
    grid: Grid,
    block_s: f64,
) -> Option<Group> {
    let n = similarity.blocks_len;
    let mut taken_prefix = vec![0usize; n + 1];
    for (i, &t) in taken.iter().enumerate() {
        taken_prefix[i + 1] = taken_prefix[i] + usize::from(t);
    }
    let is_free = |start: usize, len: usize| taken_prefix[start + len] == taken_prefix[start];
    let mut energy_prefix = vec![0.0f64; n + 1];
    for (i, e) in energy.iter().enumerate() {
        energy_prefix[i + 1] = energy_prefix[i] + e;
    }
    let mut best: Option<Group> = None;
    let mut candidates: Vec<(usize, f64)> = Vec::new();
    for len in grid.lens.step_by(grid.len_step) {
        if len == 0 || len > n {
            continue;
        }
        let length_term = len as f64 * length_weight(len as f64 * block_s);
        for start in grid.starts.clone().step_by(grid.start_step) {
            if start + len > n {
                break;
            }
            if !is_free(start, len) {
                continue;
            }
            candidates.clear();
            for other in 0..=(n - len) {
                if other.abs_diff(start) < len || !is_free(other, len) {
                    continue;
                }
                if let Some(score) = similarity.repetition(start, other, len) {
                    candidates.push((other, score));
                }
            }
            if candidates.is_empty() {
                continue;
            }
            // An upper bound lets most candidates skip the greedy selection.
            let bound: f64 = candidates
                .iter()
                .map(|c| c.1 - FITNESS_BASELINE)
                .sum::<f64>()
                * length_term
                * 2.0
                * occurrence_weight(candidates.len() + 1);
            if best.as_ref().is_some_and(|b| bound <= b.fitness) {
                continue;
            }
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut starts = vec![start];
            let mut score_sum = 0.0;
            let mut excess_sum = 0.0;
            for &(other, score) in candidates.iter() {
                if starts.iter().all(|&s| s.abs_diff(other) >= len) {
                    starts.push(other);
                    score_sum += score;
                    excess_sum += score - FITNESS_BASELINE;
                }
            }
            let group_energy = starts
                .iter()
                .map(|&s| energy_prefix[s + len] - energy_prefix[s])
                .sum::<f64>()
                / (starts.len() * len) as f64;
            let energy_weight = if mean_energy > 0.0 {
                (group_energy / mean_energy).sqrt().clamp(0.5, 2.0)
            } else {
                1.0
            };
            let fitness = excess_sum
                * length_term
                * energy_weight
                * occurrence_weight(appearances(&starts, len));
            if best.as_ref().is_none_or(|b| fitness > b.fitness) {
                let repeats = (starts.len() - 1) as f64;
                starts.sort_unstable();
                best = Some(Group {
                    starts,
                    origin: start,
                    len,
                    fitness,
                    mean_score: score_sum / repeats,
                });
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic "song" of chroma blocks: each letter is a section with its
    /// own chord sequence; lowercase letters are the same material transposed
    /// up two semitones.
    fn song(layout: &str, section_frames_len: usize) -> (Vec<[f32; 12]>, Vec<f32>) {
        let mut chroma = Vec::new();
        let mut rms = Vec::new();
        for symbol in layout.chars() {
            let seed = symbol.to_ascii_uppercase() as usize;
            let shift = if symbol.is_ascii_lowercase() { 2 } else { 0 };
            for frame in 0..section_frames_len {
                // A new chord every 64 frames, pseudo-random per section and bar.
                let bar = frame / 64;
                let chord = ((seed * 2_654_435_761usize) ^ ((bar + 1) * 40_503)) % 977 % 12;
                let mut c = [0.05f32; 12];
                for note in [0, 4, 7] {
                    c[(chord + note + shift) % 12] = 1.0;
                }
                chroma.push(c);
                rms.push(if symbol.eq_ignore_ascii_case(&'C') {
                    0.3
                } else {
                    0.2
                });
            }
        }
        (chroma, rms)
    }

    #[test]
    fn finds_the_most_repeated_section() {
        let frame_rate_hz = 22_050.0 / 512.0;
        let section = (15.0 * frame_rate_hz) as usize;
        let (chroma, rms) = song("IVCVCBCO", section);
        let structure = detect(&chroma, &rms, frame_rate_hz);
        let chorus = structure.chorus.expect("a chorus");
        let expected_s = [2.0, 4.0, 6.0].map(|i| i * section as f64 / frame_rate_hz);
        assert!(
            expected_s.iter().any(|e| (chorus.start_s - e).abs() < 3.0),
            "chorus {chorus:?}, expected one of {expected_s:?}"
        );
        assert!(
            (chorus.end_s - chorus.start_s - 15.0).abs() < 3.0,
            "{chorus:?}"
        );
    }

    #[test]
    fn transposed_repeat_still_counts() {
        let frame_rate_hz = 22_050.0 / 512.0;
        let section = (15.0 * frame_rate_hz) as usize;
        let (chroma, rms) = song("VCBcOc", section);
        let structure = detect(&chroma, &rms, frame_rate_hz);
        let chorus = structure.chorus.expect("a chorus");
        let expected_s = [1.0, 3.0, 5.0].map(|i| i * section as f64 / frame_rate_hz);
        assert!(
            expected_s.iter().any(|e| (chorus.start_s - e).abs() < 3.0),
            "chorus {chorus:?}"
        );
    }

    #[test]
    fn back_to_back_occurrences_are_one_appearance() {
        // A phrase heard three times in a row, then once more later.
        assert_eq!(appearances(&[60, 0, 10, 20], 10), 2);
        // Returns separated by other material each count.
        assert_eq!(appearances(&[0, 40, 80], 10), 3);
        // Less than half a length between two occurrences joins them.
        assert_eq!(appearances(&[0, 14, 40], 10), 2);
        assert_eq!(appearances(&[0, 16, 40], 10), 3);
    }

    #[test]
    fn silence_has_no_chorus() {
        let structure = detect(&vec![[0.0; 12]; 5000], &vec![0.0; 5000], 43.0);
        assert_eq!(structure.chorus, None);
        assert!(detect(&[], &[], 43.0).sections.is_empty());
    }
}
