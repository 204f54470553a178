-- wrk script of the side-by-side benchmark (scripts/bench/compare.py).
-- Environment:
--   BENCH_METHOD       GET or POST
--   BENCH_BODY_FILE    file whose content is every request's body (optional)
--   BENCH_HEADER       one "Name: value" header (optional)
--   BENCH_UNIQUE_PATH  "1": append "<thread>-<n>" to the URL's path, so
--                      every request names a new service (agent leaves)
-- Prints one line "BENCH {json}" with the counts and latency percentiles.

local method = os.getenv("BENCH_METHOD") or "GET"
local unique = os.getenv("BENCH_UNIQUE_PATH") == "1"
local body = nil
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*a")
  f:close()
end
local header = os.getenv("BENCH_HEADER")

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  wrk.method = method
  wrk.body = body
  if body then
    wrk.headers["Content-Type"] = "application/json"
  end
  if header and header ~= "" then
    local name, value = header:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function request()
  if unique then
    counter = counter + 1
    return wrk.format(nil, wrk.path .. tid .. "-" .. counter)
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
