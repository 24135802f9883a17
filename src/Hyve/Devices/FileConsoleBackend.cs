// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Devices;

/// <summary>A console that appends the guest's output to a file (created if missing). It has no input.</summary>
public sealed class FileConsoleBackend : ConsoleBackend
{
    private readonly FileStream _file;

    /// <summary>Opens (creating, appending to) <paramref name="path"/>. Throws IOException or UnauthorizedAccessException when it cannot.</summary>
    public FileConsoleBackend(string path)
    {
        // bufferSize 0: the base class already buffers, so each flush is one write(2) and reaches the file at once.
        _file = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0);
    }

    /// <inheritdoc/>
    public override bool HasInput => false;

    /// <inheritdoc/>
    protected override void WriteOutput(ReadOnlySpan<byte> data)
    {
        try { _file.Write(data); }
        catch (ArgumentOutOfRangeException e)
        {
            // EFBIG (the file-size limit; SIGXFSZ is ignored), which .NET throws as this: dropped and counted like any
            // other failed write, never an exception out of the flusher.
            throw new IOException(Hyve.Vmm.State.SnapshotWriter.WriteError(e), e);
        }
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (Stopping) return;
        base.Dispose(disposing);
        _file.Dispose();
    }
}
