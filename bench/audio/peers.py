"""The Python peers of the audio benchmark, one measurement per call.

Each subcommand takes files and prints one JSON object per file with the
CPU seconds it spent (time.process_time, so other load on the machine does
not count) and its results. The first file is processed once before
measuring, so one-time costs (imports, numba compilation) are not charged
to any song:

  librosa FILE...   librosa 0.11 load + beat_track + chroma + MFCC + spectral
                    features + onsets, pychorus on librosa's chroma, pyloudnorm
  essentia FILE...  essentia's MusicExtractor (all its descriptors)
  key FILE...       essentia's KeyExtractor on the mono signal
  pychorus FILE...  pychorus alone (chorus start for a 15 s clip)
"""

import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def librosa_stack(path):
    import librosa
    import numpy as np
    import pyloudnorm
    from pychorus.helpers import find_chorus

    started = time.process_time()
    y, sr = librosa.load(path, sr=22050, mono=True)
    tempo, _beats = librosa.beat.beat_track(y=y, sr=sr)
    chroma = librosa.feature.chroma_stft(y=y, sr=sr)
    mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13)
    features = {
        "centroid": librosa.feature.spectral_centroid(y=y, sr=sr),
        "rolloff": librosa.feature.spectral_rolloff(y=y, sr=sr),
        "bandwidth": librosa.feature.spectral_bandwidth(y=y, sr=sr),
        "flatness": librosa.feature.spectral_flatness(y=y),
        "zcr": librosa.feature.zero_crossing_rate(y),
        "rms": librosa.feature.rms(y=y),
    }
    onsets = librosa.onset.onset_detect(y=y, sr=sr)
    # pychorus, as its find_and_output_chorus does it (its own 16k-point chroma).
    S = np.abs(librosa.stft(y, n_fft=2**14)) ** 2
    chorus_chroma = librosa.feature.chroma_stft(S=S, sr=sr)
    chorus_start_s = find_chorus(chorus_chroma, sr, len(y) / sr, 15)
    # pyloudnorm needs the native rate and channels.
    native, native_sr = librosa.load(path, sr=None, mono=False)
    data = native.T if native.ndim > 1 else native
    lufs = pyloudnorm.Meter(native_sr).integrated_loudness(data)
    cpu_s = time.process_time() - started
    return {
        "cpu_s": cpu_s,
        "bpm": float(np.atleast_1d(tempo)[0]),
        "lufs": float(lufs),
        "chorus_start_s": chorus_start_s,
        "mfcc0": float(mfcc[0].mean()),
        "centroid_hz": float(features["centroid"].mean()),
        "onsets": int(len(onsets)),
        "chroma_frames": int(chroma.shape[1]),
    }


def essentia_stack(path):
    import essentia.standard as es

    started = time.process_time()
    features, _frames = es.MusicExtractor(lowlevelStats=["mean", "stdev"], rhythmStats=["mean"], tonalStats=["mean"])(path)
    cpu_s = time.process_time() - started
    return {
        "cpu_s": cpu_s,
        "bpm": float(features["rhythm.bpm"]),
        "key": f"{features['tonal.key_edma.key']} {features['tonal.key_edma.scale']}",
        "lufs": float(features["lowlevel.loudness_ebu128.integrated"]),
    }


def essentia_key(path):
    import essentia.standard as es

    started = time.process_time()
    audio = es.MonoLoader(filename=path)()
    key, scale, strength = es.KeyExtractor()(audio)
    return {"cpu_s": time.process_time() - started, "key": f"{key} {scale}", "strength": float(strength)}


def pychorus_only(path):
    from pychorus.helpers import create_chroma, find_chorus

    started = time.process_time()
    chroma, _y, sr, length_s = create_chroma(path)
    start_s = find_chorus(chroma, sr, length_s, 15)
    return {"cpu_s": time.process_time() - started, "chorus_start_s": start_s}


COMMANDS = {"librosa": librosa_stack, "essentia": essentia_stack, "key": essentia_key, "pychorus": pychorus_only}

def run(command, path):
    try:
        result = COMMANDS[command](path)
    except Exception as err:  # report, do not abort the whole benchmark
        result = {"error": f"{type(err).__name__}: {err}"}
    result["file"] = path
    return result


if __name__ == "__main__":
    command, paths = sys.argv[1], sys.argv[2:]
    run(command, paths[0])  # warm-up, not reported
    for path in paths:
        print(json.dumps(run(command, path)), flush=True)
