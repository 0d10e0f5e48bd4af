-- wrk script for bench/run.py: POST one JSON body, optionally to a random key each time.
--
-- Environment (set by the harness on the wrk process only):
--   BENCH_BODY_FILE  file holding the request body (required)
--   BENCH_AUTH       value of the Authorization header (optional)
--   BENCH_KEY_IDS    file with one key id per line (optional); each request then goes to
--                    the URL's path with the placeholder KEYID replaced by a random id
--
-- done() prints one line "BENCH_RESULT {json}" that the harness parses: request count,
-- duration, latency percentiles in microseconds and wrk's error counters (errors.status
-- counts responses with a status above 399).

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local content = f:read("*a")
   f:close()
   return content
end

wrk.method = "POST"
wrk.body = read_file(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE not set"))
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth then
   wrk.headers["Authorization"] = auth
end

local key_ids_file = os.getenv("BENCH_KEY_IDS")
if key_ids_file then
   local ids = {}
   local next_thread = 1

   function setup(thread)
      thread:set("thread_number", next_thread)
      next_thread = next_thread + 1
   end

   function init(args)
      for line in io.lines(key_ids_file) do
         if line ~= "" then
            ids[#ids + 1] = line
         end
      end
      assert(#ids > 0, "no key ids in " .. key_ids_file)
      math.randomseed(os.time() * 1000 + (thread_number or 0))
   end

   function request()
      local id = ids[math.random(#ids)]
      return wrk.format(nil, (wrk.path:gsub("KEYID", id, 1)))
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"connect\": %d, \"read\": %d, "
         .. "\"write\": %d, \"status\": %d, \"timeout\": %d, \"p50_us\": %d, "
         .. "\"p90_us\": %d, \"p99_us\": %d, \"max_us\": %d}\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max
   ))
end
