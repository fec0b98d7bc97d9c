local p, me, id, token, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('EXISTS', p..'node:'..me) == 0 then return {'stale'} end
if redis.call('EXISTS', p..'settle') == 1 then return {'settle'} end
local key = p..'id:'..id
local rec = redis.call('HMGET', key, 'node', 'token', 'reg')
local function pop(r)
  local q = p..'q:'..id
  local msgs = redis.call('LRANGE', q, 0, -1)
  if #msgs > 0 then
    redis.call('DEL', q)
    redis.call('ZREM', p..'qd', id)
    redis.call('DECRBY', p..'queued', #msgs / 3)
  end
  for _, m in ipairs(msgs) do r[#r + 1] = m end
  return r
end
if rec[1] and redis.call('EXISTS', p..'node:'..rec[1]) == 1 then
  if rec[2] ~= token then return {'taken'} end
  local from = ''
  if rec[1] ~= me then
    from = rec[1]
    redis.call('SREM', p..'ids:'..rec[1], id)
    redis.call('SADD', p..'ids:'..me, id)
    redis.call('HSET', key, 'node', me)
    redis.call('XADD', p..'inbox:'..rec[1], 'MAXLEN', '~', 100000, '*', 't', 'v', 'd', id, 'n', me)
  end
  return pop({'reattach', rec[3], from})
end
if rec[1] then redis.call('SREM', p..'ids:'..rec[1], id) end
local n = 0
for _, node in ipairs(redis.call('SMEMBERS', p..'nodes')) do
  if redis.call('EXISTS', p..'node:'..node) == 1 then
    n = n + redis.call('SCARD', p..'ids:'..node)
  end
end
if n >= limit then return {'limit'} end
-- Registration numbers rise with the master's clock (microseconds, exact in a Lua number),
-- so lists merged from several shards keep registration order; strictly rising per shard.
local t = redis.call('TIME')
local reg = math.max(t[1] * 1000000 + t[2], tonumber(redis.call('GET', p..'seq') or '0') + 1)
reg = string.format('%.0f', reg)
redis.call('SET', p..'seq', reg)
redis.call('HSET', key, 'node', me, 'token', token, 'reg', reg)
redis.call('SADD', p..'ids:'..me, id)
return pop({'new', reg, ''})
