-- bench/frontend_keys.lua - wrk script for bench/bench_frontend.sh.
--
--   wrk ... -s bench/frontend_keys.lua URL -- route STREAM   GET /route?stream=STREAM&key=K,
--                                                            K drawn from 1,000 keys
--   wrk ... -s bench/frontend_keys.lua URL -- fixed          GET /fixed (the baseline)
--
-- Both modes build their requests up front and go through request(), so the client does the
-- same work per request in each. done() prints one line for the script to parse:
--   RESULT rps=R p99_us=P requests=N non2xx=N errors=N

local reqs = {}

function init(args)
	if args[1] == "route" then
		for i = 1, 1000 do
			reqs[i] = wrk.format("GET", "/route?stream=" .. args[2] .. "&key=user-" .. i)
		end
	else
		reqs[1] = wrk.format("GET", "/fixed")
	end
end

function request()
	return reqs[math.random(#reqs)]
end

function done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format("RESULT rps=%.1f p99_us=%d requests=%d non2xx=%d errors=%d\n",
		summary.requests / (summary.duration / 1e6), latency:percentile(99),
		summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
