// SPDX-License-Identifier: BSD-2-Clause
using System.Text;

namespace Hyve.Devices;

/// <summary>
/// A console held in memory: guest output collects in <see cref="Output"/>, and <see cref="Inject(ReadOnlySpan{byte})"/> queues input
/// that is delivered synchronously as the receiver makes room. For tests, and for a port with no backend that
/// should still be observable.
/// </summary>
public sealed class MemoryConsoleBackend : IConsoleBackend
{
    private readonly object _outLock = new();
    private readonly List<byte> _output = [];
    private readonly object _inLock = new();
    private readonly Queue<byte> _pending = new();
    private IConsoleReceiver? _receiver;
    private readonly byte[] _chunk = new byte[64];

    /// <summary>How many times <see cref="Flush"/> was called.</summary>
    public int FlushCount { get; private set; }

    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed { get; private set; }

    /// <inheritdoc/>
    public bool HasInput => true;

    /// <summary>Every byte the guest wrote so far.</summary>
    public byte[] Output
    {
        get { lock (_outLock) return [.. _output]; }
    }

    /// <summary>The guest's output as Latin-1 text.</summary>
    public string OutputText => Encoding.Latin1.GetString(Output);

    /// <summary>Input bytes not yet taken by the receiver.</summary>
    public int PendingInput
    {
        get { lock (_inLock) return _pending.Count; }
    }

    /// <inheritdoc/>
    public void Attach(IConsoleReceiver receiver)
    {
        lock (_inLock)
        {
            if (_receiver is not null) throw new InvalidOperationException("console backend already attached to a device");
            _receiver = receiver;
            DeliverLocked();
        }
    }

    /// <summary>Queues host input for the guest and delivers as much as the receiver takes now.</summary>
    public void Inject(ReadOnlySpan<byte> data)
    {
        lock (_inLock)
        {
            foreach (var b in data) _pending.Enqueue(b);
            DeliverLocked();
        }
    }

    /// <summary>Queues text (Latin-1) as host input.</summary>
    public void Inject(string text) => Inject(Encoding.Latin1.GetBytes(text));

    /// <inheritdoc/>
    public void Write(byte value)
    {
        lock (_outLock) _output.Add(value);
    }

    /// <inheritdoc/>
    public void Flush()
    {
        lock (_outLock) FlushCount++;
    }

    /// <inheritdoc/>
    public void ReceiverHasRoom()
    {
        lock (_inLock) DeliverLocked();
    }

    /// <inheritdoc/>
    public void Dispose() => IsDisposed = true;

    private void DeliverLocked()
    {
        if (_receiver is null) return;
        while (_pending.Count > 0)
        {
            int n = Math.Min(_pending.Count, _chunk.Length);
            int i = 0;
            foreach (var b in _pending)
            {
                if (i == n) break;
                _chunk[i++] = b;
            }
            int taken = _receiver.Offer(_chunk.AsSpan(0, n));
            for (int k = 0; k < taken; k++) _pending.Dequeue();
            if (taken < n) break;
        }
    }
}
