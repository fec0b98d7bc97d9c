local p, me, kind, src, dst, text = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ttl, requeue, notice = tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9] == '1'
local function held(id)
  local owner = redis.call('HGET', p..'id:'..id, 'node')
  if owner and redis.call('EXISTS', p..'node:'..owner) == 1 then return owner end
  return nil
end
if notice and held(src) then return 'held' end
local owner = held(dst)
if owner and not (requeue and owner == me) then
  redis.call('XADD', p..'inbox:'..owner, 'MAXLEN', '~', 100000, '*',
    't', 'm', 'k', kind, 's', src, 'd', dst, 'm', text, 'i', ARGV[12])
  return 'sent'
end
if kind == 'LEAVE' or kind == 'EXPIRE' then return 'dropped' end
if tonumber(redis.call('GET', p..'queued') or '0') >= tonumber(ARGV[11]) then return 'full' end
local q = p..'q:'..dst
local len = redis.call('LLEN', q)
if len >= 3 * tonumber(ARGV[10]) then return 'full' end
if len == 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', p..'qd', t[1] * 1000 + math.floor(t[2] / 1000) + ttl, dst)
end
redis.call('RPUSH', q, src, text, ARGV[12])
redis.call('INCR', p..'queued')
return 'queued'
