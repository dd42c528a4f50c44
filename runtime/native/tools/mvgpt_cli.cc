// mvgpt-cli: the native runtime's command line, with the core flags of mvgpt-run.
//
//   mvgpt-cli VIDEO QUESTION [--question Q ...] [--model PKG] [--json] [--max-new-tokens N]
//             [--threads N] [--provider cpu|cuda] [--ops-library LIB] [--repetition-penalty X]
//             [--temperature T] [--top-p P] [--top-k K] [--seed S]
//   mvgpt-cli --frames FILE --shape F,H,W QUESTION [same options]
//
// VIDEO is a video file (read when libmvgpt has OpenCV); FILE holds F RGB frames of H x W, uint8,
// row-major (what a decoder or a camera hands over). The answer streams to stdout; --json prints
// one JSON object per question instead (the fields of mvgpt-run --json). Bad input: one line on
// stderr and exit status 1.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "mvgpt.hpp"

#ifndef MVGPT_DEFAULT_PACKAGE
#define MVGPT_DEFAULT_PACKAGE ""
#endif
#ifndef MVGPT_DEFAULT_OPS_LIBRARY
#define MVGPT_DEFAULT_OPS_LIBRARY ""
#endif

namespace {

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

long number(const std::string& flag, const std::string& text, long low) {
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < low) throw Usage(flag + ": expected an integer >= " + std::to_string(low) + ", got '" + text + "'");
  return v;
}

std::string quote(const std::string& text) {  // a JSON string, UTF-8 kept as it is
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

double real(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw Usage(flag + ": expected a number, got '" + text + "'");
  return v;
}

// --frames FILE --shape F,H,W: F frames of H x W RGB
std::vector<uint8_t> read_frames(const std::string& path, const std::string& shape_text, int& f, int& h, int& w) {
  char c1 = 0, c2 = 0;
  std::istringstream shape(shape_text);
  if (!(shape >> f >> c1 >> h >> c2 >> w) || c1 != ',' || c2 != ',' || f < 1 || h < 1 || w < 1 || !shape.eof()) {
    throw Usage("--shape: expected F,H,W (three integers >= 1), got '" + shape_text + "'");
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Usage("--frames: expected a readable file, got '" + path + "'");
  const size_t bytes = static_cast<size_t>(f) * h * w * 3;
  if (bytes / 3 / static_cast<size_t>(f) / static_cast<size_t>(h) != static_cast<size_t>(w) || bytes > (size_t{1} << 34)) {
    throw Usage("--shape: expected at most 2^34 bytes of frames, got " + shape_text);
  }
  file.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(file.tellg());
  if (size != bytes) {
    throw Usage("--frames: expected exactly " + std::to_string(bytes) + " bytes for --shape " + shape_text + ", got " +
                std::to_string(size));
  }
  file.seekg(0);
  std::vector<uint8_t> rgb(bytes);
  file.read(reinterpret_cast<char*>(rgb.data()), static_cast<std::streamsize>(bytes));
  if (static_cast<size_t>(file.gcount()) != bytes) throw Usage("--frames: could not read " + path);
  return rgb;
}

}  // namespace

int main(int argc, char** argv) {
  // FFmpeg and OpenCV write their own lines on a bad file: one line is ours (as mvgpt-run)
  setenv("OPENCV_LOG_LEVEL", "ERROR", 0);
  setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", 0);
  try {
    std::string model_path = MVGPT_DEFAULT_PACKAGE, frames_path, shape_text, ops_library, provider = "cpu";
    std::vector<std::string> positional;
    if (const char* env = std::getenv("MVGPT_OPS_LIBRARY")) ops_library = env;
    if (ops_library.empty()) ops_library = MVGPT_DEFAULT_OPS_LIBRARY;
    std::vector<std::string> questions;
    bool json = false;
    mvgpt_model_params model_params = mvgpt_model_default_params();
    mvgpt_answer_params params = mvgpt_answer_default_params();
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw Usage(arg + ": expected a value after it");
        return argv[++i];
      };
      if (arg == "--model") model_path = value();
      else if (arg == "--frames") frames_path = value();
      else if (arg == "--shape") shape_text = value();
      else if (arg == "--question") questions.push_back(value());
      else if (arg == "--json") json = true;
      else if (arg == "--max-new-tokens") params.max_new_tokens = static_cast<int>(number(arg, value(), 1));
      else if (arg == "--threads") model_params.threads = static_cast<int>(number(arg, value(), 1));
      else if (arg == "--ops-library") ops_library = value();
      else if (arg == "--provider") provider = value();
      else if (arg == "--repetition-penalty") params.repetition_penalty = real(arg, value());
      else if (arg == "--temperature") params.temperature = real(arg, value());
      else if (arg == "--top-p") params.top_p = real(arg, value());
      else if (arg == "--top-k") params.top_k = static_cast<int>(number(arg, value(), 0));
      else if (arg == "--seed") params.seed = static_cast<uint64_t>(number(arg, value(), 0)), params.use_seed = 1;
      else if (arg == "-h" || arg == "--help") {
        std::cout << "usage: mvgpt-cli VIDEO QUESTION [--question Q ...] [--model PKG] [--json] [--max-new-tokens N]\n"
                     "       [--threads N] [--provider cpu|cuda] [--ops-library LIB] [--repetition-penalty X]\n"
                     "       [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
                     "   or: mvgpt-cli --frames FILE --shape F,H,W QUESTION [the same options]\n";
        return 0;
      } else if (!arg.empty() && arg[0] == '-') throw Usage("unknown option " + arg + "; see --help");
      else positional.push_back(arg);
    }
    std::string video;
    if (frames_path.empty()) {  // VIDEO QUESTION
      if (positional.empty()) throw Usage("expected a video file or --frames FILE --shape F,H,W, got none; see --help");
      video = positional.front();
      positional.erase(positional.begin());
    }
    questions.insert(questions.begin(), positional.begin(), positional.end());
    if (questions.empty()) throw Usage("expected a question, got none; fix: mvgpt-cli video.mp4 \"What happens?\"");
    model_params.ops_library = ops_library.c_str();
    model_params.provider = provider.c_str();
    std::vector<uint8_t> rgb;
    int f = 0, h = 0, w = 0;
    if (video.empty()) rgb = read_frames(frames_path, shape_text, f, h, w);
    mvgpt::Model model(model_path, model_params);
    if (!model.notes().empty()) std::cerr << model.notes();
    mvgpt::Encoding encoding = video.empty() ? model.encode(rgb.data(), f, h, w) : model.encode_video(video);
    for (size_t q = 0; q < questions.size(); ++q) {
      if (json) {
        std::string record = model.answer(encoding, questions[q], params).json();
        record.insert(1, "\"question\":" + quote(questions[q]) + ",");
        std::cout << record << "\n" << std::flush;
        continue;
      }
      if (questions.size() > 1) std::cout << "Q: " << questions[q] << "\nA: " << std::flush;
      model.answer(encoding, questions[q], params, [](const std::string& text) {
        std::cout << text << std::flush;
        return true;
      });
      std::cout << "\n";
    }
    return 0;
  } catch (const Usage& e) {
    std::cerr << "mvgpt-cli: error: " << e.what() << "\n";
    return 1;
  } catch (const mvgpt::Exception& e) {
    std::cerr << "mvgpt-cli: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "mvgpt-cli: error: " << e.what() << "\n";
    return 1;
  }
}
