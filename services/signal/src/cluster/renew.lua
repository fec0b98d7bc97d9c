local p, me, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ok = redis.call('PEXPIRE', p..'node:'..me, lease)
-- Recently alive: a failover that outlasts the lease must not make this node look dead.
if ok == 1 then redis.call('SET', p..'seen:'..me, '1', 'PX', 3 * lease) end
return ok
