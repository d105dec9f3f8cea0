"""The job store's Lua scripts: each status change is one atomic check-and-write in Redis
(see `service.jobs.store` for the key layout they act on)."""

# KEYS: 1 job hash, 2 running set, 3 image, 4 purge flag (set when the image is dropped: see
# `JobStore.compact`).
# ARGV: 1 allowed current statuses (space separated), 2 new status, 3 required worker ('' =
# any), 4 job id, 5 ttl seconds (0 = keep), 6 '1' to drop the image, 7.. field/value pairs.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '%S+') do if s == cur then allowed = true end end
if not allowed then return {0, cur} end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[3] then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == 'running' then redis.call('SADD', KEYS[2], ARGV[4])
else redis.call('SREM', KEYS[2], ARGV[4]) end
if ARGV[6] == '1' and redis.call('DEL', KEYS[3]) == 1 then redis.call('SET', KEYS[4], '1') end
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return {1, cur}
"""

# KEYS: 1 job hash, 2 running set. ARGV: 1 worker, 2 now (ISO), 3 job id.
CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
local mine = cur == 'running' and redis.call('HGET', KEYS[1], 'worker') == ARGV[1]
if cur ~= 'queued' and not mine then return {0, cur} end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'updated_at', ARGV[2],
           'started_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HDEL', KEYS[1], 'progress')
redis.call('SADD', KEYS[2], ARGV[3])
return {1, cur}
"""

# Scripts that read the clock use Redis's, so workers on several hosts agree on expiry.
HEARTBEAT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600)
return 1
"""

LIVE_WORKERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

# KEYS: 1 running set, 2 workers, 3 outages, 4 purge flag. ARGV: 1 key prefix,
# 2 max attempts, 3 now (ISO), 4 error JSON when attempts are used up, 5 lease seconds (the
# heartbeat TTL). Job keys are built here from the prefix (fine on a single Redis; this store
# does not target Redis Cluster).
# A lease that ran out while Redis was unreachable (an outage ended after the worker's last
# beat) says nothing about the job: it is re-queued without counting as a death (`lost`).
REAP = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. 'job:' .. id
  local status = redis.call('HGET', key, 'status')
  if status ~= 'running' then
    redis.call('SREM', KEYS[1], id)
  else
    local w = redis.call('HGET', key, 'worker')
    local expiry = false
    if w then expiry = redis.call('ZSCORE', KEYS[2], w) end
    if (not expiry) or tonumber(expiry) < now then
      redis.call('SREM', KEYS[1], id)
      local outage = {}
      if expiry then
        local last_beat = tonumber(expiry) - tonumber(ARGV[5])
        outage = redis.call('ZRANGEBYSCORE', KEYS[3], last_beat, '+inf', 'LIMIT', 0, 1)
      end
      local lost = tonumber(redis.call('HGET', key, 'lost') or '0')
      if #outage == 0 then lost = lost + 1 end
      redis.call('HSET', key, 'lost', lost)
      if lost >= tonumber(ARGV[2]) then
        redis.call('HSET', key, 'status', 'failed', 'error', ARGV[4], 'updated_at', ARGV[3],
                   'finished_at', ARGV[3], 'worker', '')
        redis.call('DEL', key .. ':image')
        redis.call('SET', KEYS[4], '1')
        table.insert(out, {id, 'failed'})
      else
        redis.call('HSET', key, 'status', 'queued', 'updated_at', ARGV[3], 'worker', '')
        redis.call('HDEL', key, 'progress')
        table.insert(out, {id, 'queued'})
      end
    end
  end
end
return out
"""

# An outage as a worker saw it: it could not reach Redis from its last good beat until now.
# Stored by end time (Redis clock); REAP reads it. KEYS: 1 outages. ARGV: 1 seconds since the
# last good beat.
NOTE_OUTAGE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = now - tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, string.format('%.3f-%.3f', start, now))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 86400)
return 1
"""

# Jobs created but never handed to the broker (the API died between `create` and its send):
# ids in the unsent index older than ARGV[1] seconds (Redis clock) leave it; those still
# queued are returned, to be sent again. KEYS: 1 unsent index. ARGV: 1 seconds, 2 key prefix.
TAKE_UNSENT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))) do
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HGET', ARGV[2] .. 'job:' .. id, 'status') == 'queued' then
    table.insert(out, id)
  end
end
return out
"""
