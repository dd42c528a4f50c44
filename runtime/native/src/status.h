// One error type for the native runtime: a status code of the C API and a one-line message.
// Every failure inside the library throws it; the C API (c_api.cc) turns it into a status.
#pragma once

#include <stdexcept>
#include <string>

#include "mvgpt.h"

namespace mvgpt {

class Error : public std::runtime_error {
 public:
  Error(mvgpt_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  mvgpt_status status() const { return status_; }

 private:
  mvgpt_status status_;
};

}  // namespace mvgpt
