"""The Lua scripts of `TaskQueue` that claim, ack, re-queue and put elements aside atomically.

They read an envelope's id at its fixed offset (byte 6: length, then the id) without verifying
it: whatever they decide from it (drop a replay, count an attempt) is safe for an element forged
with the password; acting on a task (a "lost" result) is left to the driver, which verifies first.
"""

from __future__ import annotations

# Shared by the scripts below: keep a bounded trace of an element put aside (its first 200 bytes,
# its size, why) and count it; the driver reports the count. KEYS are passed in by the caller.
DEAD_LETTER_FN = """
local function dead_letter(list, stats, item, why)
  redis.call('RPUSH', list, string.sub(item, 1, 200) .. ' [' .. #item .. ' bytes: ' .. why .. ']')
  redis.call('LTRIM', list, -100, -1)
  redis.call('HINCRBY', stats, 'dead_lettered', 1)
end
"""

# Put aside this worker's claimed elements that it must not read (over `limit` bytes), or the
# one element ARGV[2] that it could not ack. KEYS: processing list, dead-letter list, stats.
# ARGV: limit (0 = none), element ('' = none), why. Returns how many were put aside.
PUT_ASIDE_LUA = DEAD_LETTER_FN + """
local n = 0
if ARGV[2] ~= '' then
  n = redis.call('LREM', KEYS[1], 1, ARGV[2])
  if n > 0 then dead_letter(KEYS[2], KEYS[3], ARGV[2], ARGV[3]) end
end
local limit = tonumber(ARGV[1])
if limit > 0 then
  for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if #item > limit then
      redis.call('LREM', KEYS[1], 1, item)
      dead_letter(KEYS[2], KEYS[3], item, 'over ' .. limit .. ' bytes')
      n = n + 1
    end
  end
end
return n
"""

# Ack in one command: publish the result, drop the claim and (optionally) claim the next
# envelope, atomically as MULTI/EXEC would. One reply to parse instead of five: redis-py's
# MULTI pipeline was 11% of a worker's CPU in the no-op benchmark.
# The acked id joins the cluster's acked set in the same call (a replayed copy is refused), and a
# next envelope whose id is already acked is dropped here, before the worker reads it.
# A next element over the worker's size limit is dead-lettered here too, never sent to it.
# KEYS: results list, processing list, task list, acked set, errors list, dead-letter list, stats.
# ARGV: result ('' = none), envelope, claim next, acked id ('' = none), acked-set TTL, worker id,
# largest element the worker reads (0 = no limit).
ACK_LUA = DEAD_LETTER_FN + """
if ARGV[1] ~= '' then redis.call('LPUSH', KEYS[1], ARGV[1]) end
redis.call('LREM', KEYS[2], 1, ARGV[2])
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
end
if ARGV[3] ~= '1' then return false end
for _ = 1, 100 do
  local nxt = redis.call('LMOVE', KEYS[3], KEYS[2], 'RIGHT', 'LEFT')
  if not nxt then return false end
  local limit = tonumber(ARGV[7])
  if limit > 0 and #nxt > limit then
    redis.call('LREM', KEYS[2], 1, nxt)
    dead_letter(KEYS[6], KEYS[7], nxt, 'over ' .. limit .. ' bytes (claimed by ' .. ARGV[6] .. ')')
  else
    local idlen = string.byte(nxt, 6)
    if not idlen or redis.call('SISMEMBER', KEYS[4], string.sub(nxt, 7, 6 + idlen)) == 0 then return nxt end
    redis.call('LREM', KEYS[2], 1, nxt)
    redis.call('RPUSH', KEYS[5], 'worker ' .. ARGV[6] .. ' dropped a replayed envelope (its id was already acked)')
  end
end
return false
"""

# Re-queue every envelope of workers whose lease expired. KEYS[1]=workers set, KEYS[2]=tasks,
# KEYS[3]=attempts hash, KEYS[4]=dead-letter list, KEYS[5]=stats; ARGV[1]=key prefix,
# ARGV[2]=max attempts, ARGV[3]=largest element returned to the driver.
# Returns a flat list: outcome, worker_id, data, ... where data is the (unverified) task id for
# "requeued" and the whole element for "exhausted": the driver verifies it before it declares the
# task lost. Elements too short to carry an id, or too large, are dead-lettered, never returned.
REQUEUE_LUA = DEAD_LETTER_FN + """
local out = {}
local workers = redis.call('SMEMBERS', KEYS[1])
for _, wid in ipairs(workers) do
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. wid) == 0 then
    local plist = ARGV[1] .. 'processing:' .. wid
    local items = redis.call('LRANGE', plist, 0, -1)
    for _, item in ipairs(items) do
      local idlen = string.byte(item, 6)
      if not idlen or #item < 6 + idlen or #item > tonumber(ARGV[3]) then
        dead_letter(KEYS[4], KEYS[5], item, 'not an envelope or too large (claimed by a lost worker)')
      else
        local tid = string.sub(item, 7, 6 + idlen)
        local n = redis.call('HINCRBY', KEYS[3], tid, 1)
        if n >= tonumber(ARGV[2]) then
          table.insert(out, 'exhausted'); table.insert(out, wid); table.insert(out, item)
        else
          redis.call('RPUSH', KEYS[2], item)
          table.insert(out, 'requeued'); table.insert(out, wid); table.insert(out, tid)
        end
      end
    end
    redis.call('DEL', plist)
    redis.call('SREM', KEYS[1], wid)
  end
end
return out
"""
