-- wrk script of benchmarks/load.py: each request sends the next token of a pool read from
-- $LOAD_TOKENS (one per line), and each thread counts the answers by class; done() adds
-- them up and prints one machine-readable line.
local tokens = {}
for line in io.lines(os.getenv("LOAD_TOKENS")) do
  tokens[#tokens + 1] = line
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

local index = 0
ok, client_errors, server_errors, other = 0, 0, 0, 0

function request()
  index = index + 1
  local token = tokens[(index % #tokens) + 1]
  return wrk.format("GET", "/api/me", { ["Authorization"] = "Bearer " .. token })
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  elseif status >= 400 and status < 500 then
    client_errors = client_errors + 1
  elseif status >= 500 then
    server_errors = server_errors + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local sums = { ok = 0, client_errors = 0, server_errors = 0, other = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(sums) do
      sums[name] = sums[name] + thread:get(name)
    end
  end
  io.write(string.format(
    "LOAD requests=%d 2xx=%d 4xx=%d 5xx=%d other=%d socket_errors=%d p99_ms=%.1f\n",
    summary.requests, sums.ok, sums.client_errors, sums.server_errors, sums.other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(99) / 1000))
end
