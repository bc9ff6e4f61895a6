-- wrk script: POST pre-signed ~1 KB MonCash events, each request a new event.
--
-- usage: wrk -t T -c C -d D -s bench/post.lua URL -- REQUESTS_FILE HOST T
-- REQUESTS_FILE has one request per line: "<timestamp>\t<hex signature>\t<body>". Thread i of
-- T takes lines i, i+T, i+2T... so no two threads send the same event. A thread that runs out
-- starts its list again (those requests are duplicates: the benchmark counts accepted events
-- in Redis, not requests). At the end one line "WRKJSON {...}" carries the numbers.

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   local path, host = args[1], args[2]
   local nthreads = tonumber(args[3])
   reqs = {}
   local i = 0
   for line in io.lines(path) do
      if i % nthreads == tid then
         local ts, sig, body = line:match("^(%d+)\t(%x+)\t(.*)$")
         reqs[#reqs + 1] = wrk.format("POST", nil, {
            ["Host"] = host,
            ["Content-Type"] = "application/json",
            ["X-MCC-Timestamp"] = ts,
            ["X-MCC-Signature"] = sig,
         }, body)
      end
      i = i + 1
   end
   available = #reqs
   sent = 0
end

function request()
   sent = sent + 1
   return reqs[(sent - 1) % available + 1]
end

function done(summary, latency, requests)
   local sent_total, available_total = 0, 0
   for _, t in ipairs(threads) do
      sent_total = sent_total + t:get("sent")
      available_total = available_total + t:get("available")
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,"available":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes, sent_total, available_total,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
